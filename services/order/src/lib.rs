//! tracehop-order
