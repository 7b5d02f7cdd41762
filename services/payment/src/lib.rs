//! tracehop-payment
