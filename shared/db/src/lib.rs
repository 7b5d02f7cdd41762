//! tracehop-db
