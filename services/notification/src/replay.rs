//! Replay and redrive for notification: the handler as a [`Projection`].
//!
//! A replay sends exactly the mails that are missing: the handler finds the
//! row of every event it has handled before and sends nothing for it. A
//! redrive of dead letters does the same for the events that failed.
//!
//! A rebuild is refused. `notification.emails` is not a projection that can
//! be derived again from the events: it is the ledger of mails that went
//! out, an effect outside the database that cannot be undone. Resetting it
//! and replaying would mail every customer again; recreating the rows
//! without sending would claim mails that this rebuild never sent, and
//! would erase what the ledger knows and the stream does not (when each
//! mail went out, and which were skipped for want of an address). What a
//! rebuild is for, filling in what is missing, a plain replay from the
//! first sequence already does.

use tracehop_messaging::{Delivery, Outcome, ProcessError, Projection, ResetError};
use tracehop_proto::v1::OrderEvent;

use crate::notify::Notifier;

impl Projection for Notifier {
    type Event = OrderEvent;

    async fn apply(&self, delivery: Delivery<OrderEvent>) -> Result<Outcome, ProcessError> {
        match self.notify(&delivery.event).await {
            Ok(true) => Ok(Outcome::Applied),
            Ok(false) => Ok(Outcome::Skipped),
            Err(error) => Err(error.into()),
        }
    }

    async fn reset(&self) -> Result<(), ResetError> {
        Err(ResetError::Refused(
            "notification cannot be rebuilt: its rows record e-mails already sent, and a rebuild would either send \
             them again or record mails it never sent; replay without --rebuild (from --from-seq 1) to send only \
             what is missing"
                .to_string(),
        ))
    }
}
