//! tracehop
