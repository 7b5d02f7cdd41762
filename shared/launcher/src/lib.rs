//! tracehop-launcher
