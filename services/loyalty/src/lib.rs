//! tracehop-loyalty
