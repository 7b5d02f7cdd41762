//! tracehop-service
