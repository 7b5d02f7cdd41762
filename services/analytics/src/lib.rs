//! tracehop-analytics
