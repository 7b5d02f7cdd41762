//! tracehop-inventory
