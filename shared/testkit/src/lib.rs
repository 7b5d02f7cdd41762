//! tracehop-testkit
