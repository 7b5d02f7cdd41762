//! The wire contract of tracehop: every request, reply and event, generated at
//! build time from `proto/tracehop/v1/*.proto`, plus the NATS subjects they
//! travel on.
//!
//! - [`v1`]: the generated messages (`tracehop.v1` package).
//! - [`Reply`]: what every reply has in common (an optional typed [`v1::Error`]),
//!   so the messaging layer can turn failures into replies and failure spans
//!   without knowing the concrete type.
//! - [`subjects`]: request/reply subjects and event subjects.

pub mod v1 {
    #![allow(clippy::all, unreachable_pub, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/tracehop.v1.rs"));
}

pub use prost::{Message, Name};

use v1::{Error, ErrorCode};

/// A reply message: it either carries an [`Error`] or the answer.
pub trait Reply: Message + Name + Default + Send + Sync + 'static {
    /// The error, if the request failed.
    fn error(&self) -> Option<&Error>;
    /// A reply that says only that the request failed.
    fn from_error(error: Error) -> Self;
}

macro_rules! impl_reply {
    ($($ty:ident),* $(,)?) => {$(
        impl Reply for v1::$ty {
            fn error(&self) -> Option<&Error> {
                self.error.as_ref()
            }
            #[allow(clippy::needless_update)]
            fn from_error(error: Error) -> Self {
                Self { error: Some(error), ..Default::default() }
            }
        }
    )*};
}

impl_reply!(
    PlaceOrderReply,
    GetOrderReply,
    ReserveStockReply,
    CommitStockReply,
    ReleaseStockReply,
    GetPricesReply,
    ChargeReply,
    AnalyticsSummaryReply,
    ReplayReply,
    SentinelStatusReply,
    KeeperStatsReply,
);

impl Error {
    /// An error with a code and a message (free of secrets and personal data).
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code: code as i32, message: message.into() }
    }

    /// The code, with unknown values read as [`ErrorCode::Internal`].
    pub fn kind(&self) -> ErrorCode {
        ErrorCode::try_from(self.code).unwrap_or(ErrorCode::Internal)
    }
}

impl ErrorCode {
    /// A short snake_case name, used as `error.type` on spans and as the
    /// error code in the gateway's JSON errors.
    pub fn short_name(self) -> &'static str {
        match self {
            ErrorCode::Unspecified => "unspecified",
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::NotFound => "not_found",
            ErrorCode::OutOfStock => "out_of_stock",
            ErrorCode::PaymentDeclined => "payment_declined",
            ErrorCode::PaymentFailed => "payment_failed",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::Conflict => "conflict",
        }
    }

    /// Whether the code says the answering service itself failed (internal,
    /// unavailable, a failed payment processor) rather than gave an expected
    /// business answer (declined, out of stock, invalid, not found,
    /// conflict). Only a fault makes the answering side's span ERROR; the
    /// calling side's span is ERROR either way, as its call did not succeed.
    pub fn is_fault(self) -> bool {
        match self {
            ErrorCode::Unspecified | ErrorCode::PaymentFailed | ErrorCode::Unavailable | ErrorCode::Internal => true,
            ErrorCode::InvalidArgument
            | ErrorCode::NotFound
            | ErrorCode::OutOfStock
            | ErrorCode::PaymentDeclined
            | ErrorCode::Conflict => false,
        }
    }
}

/// The NATS subjects of the wire contract.
pub mod subjects {
    /// Request/reply: place an order ([`crate::v1::PlaceOrderRequest`]).
    pub const ORDER_PLACE: &str = "svc.order.place";
    /// Request/reply: read an order ([`crate::v1::GetOrderRequest`]).
    pub const ORDER_GET: &str = "svc.order.get";
    /// Request/reply: reserve stock for an order.
    pub const INVENTORY_RESERVE: &str = "svc.inventory.reserve";
    /// Request/reply: turn an order's reservation into a sale.
    pub const INVENTORY_COMMIT: &str = "svc.inventory.commit";
    /// Request/reply: give an order's reserved stock back.
    pub const INVENTORY_RELEASE: &str = "svc.inventory.release";
    /// Request/reply: unit prices of any number of SKUs.
    pub const INVENTORY_PRICES: &str = "svc.inventory.prices";
    /// Request/reply: charge a card for an order.
    pub const PAYMENT_CHARGE: &str = "svc.payment.charge";
    /// Request/reply: the analytics summary.
    pub const ANALYTICS_SUMMARY: &str = "svc.analytics.summary";

    /// Request/reply: the sentinel's view of every expected consumer.
    pub const SENTINEL_STATUS: &str = "svc.sentinel.status";
    /// Request/reply: each keeper's counts ([`crate::v1::KeeperStatsReply`]).
    pub const KEEPER_STATS: &str = "svc.keeper.stats";
    /// Alerts raised and resolved by the sentinel: `tracehop.alerts.<consumer>`.
    pub const ALERTS_PREFIX: &str = "tracehop.alerts";

    /// Request/reply: replay the stream, or redrive the dead letters, through
    /// one consumer's handler ([`crate::v1::ReplayRequest`]), served by that
    /// consumer's service: `svc.<consumer>.replay`.
    pub fn replay(consumer: &str) -> String {
        format!("svc.{consumer}.replay")
    }

    /// Event: an order was confirmed ([`crate::v1::OrderEvent`]).
    pub const ORDER_CONFIRMED: &str = "orders.confirmed";
    /// Event: an order failed ([`crate::v1::OrderEvent`]).
    pub const ORDER_FAILED: &str = "orders.failed";
}

pub mod validate;

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind().short_name(), self.message)
    }
}
