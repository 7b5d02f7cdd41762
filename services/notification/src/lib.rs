//! tracehop-notification
