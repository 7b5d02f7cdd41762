//! tracehop-gateway
