//! The one catalog of the system: every service, the executable it runs
//! as, the request/reply subjects it serves and calls, the events it
//! publishes, its database schema, the durable consumers it owns,
//! whether its consumer can be replayed and how its copies share the work
//! ([`Instances`]); plus the streams those consumers read. `tracehop up` and the tests create the
//! streams and every durable before any service starts, so that events wait
//! for a consumer that is down instead of being missed.
//!
//! Everything else derives from here: the launcher's start order and
//! readiness probes, `tracehop status`, replay's list of replayable
//! consumers, the sentinel's expected consumers, each crate's `SERVICE`
//! name, each service's NATS permissions ([`crate::access`]) and its
//! database role. A new service is a new [`Service`] variant; every `match` on it
//! then fails to compile until the service is described, and the tests
//! below fail when it is missing from [`Service::ALL`].

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures::TryStreamExt as _;

use tracehop_proto::subjects;

/// Every service of the system.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Service {
    Inventory,
    Payment,
    Order,
    Loyalty,
    Notification,
    Analytics,
    Sentinel,
    Keeper,
    Gateway,
}

/// How copies of a service share the work when several run (`tracehop up
/// --instances N`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Instances {
    /// Exactly one: the gateway, which owns the HTTP port.
    Single,
    /// Any number, sharing the work: request/reply handlers answer in one
    /// queue group, a durable's deliveries are split among its pullers, and
    /// what they do alone is guarded in PostgreSQL (the outbox relay takes
    /// rows `FOR UPDATE SKIP LOCKED`, the crash resolver claims rows with a
    /// lease column).
    Many,
    /// Any number, one of which leads through a lease in the key-value
    /// bucket of [`crate::lease`]; the others wait to take over. For work
    /// whose every copy would be seen twice (the sentinel's alerts).
    Leader,
    /// Any number, each deciding its own share of the span feed's
    /// partitions (`KEEPER_INSTANCE` of `KEEPER_INSTANCES`).
    Partitioned,
}

/// How a service shows that it is ready, beyond answering on its subjects
/// and pulling on its durables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// Its subjects and durables say it all.
    Messaging,
    /// It also serves HTTP, and `/healthz` must say 200.
    Http,
}

impl Service {
    /// Every service in the order they start: responders before their
    /// callers, the gateway last so that it is healthy only when the rest
    /// is up.
    pub const ALL: [Service; 9] = [
        Service::Inventory,
        Service::Payment,
        Service::Order,
        Service::Loyalty,
        Service::Notification,
        Service::Analytics,
        Service::Sentinel,
        Service::Keeper,
        Service::Gateway,
    ];

    /// The name people and `service.name` use.
    pub const fn name(self) -> &'static str {
        match self {
            Service::Inventory => "inventory",
            Service::Payment => "payment",
            Service::Order => "order",
            Service::Loyalty => "loyalty",
            Service::Notification => "notification",
            Service::Analytics => "analytics",
            Service::Sentinel => "sentinel",
            Service::Keeper => "keeper",
            Service::Gateway => "gateway",
        }
    }

    /// The executable the service runs as.
    pub const fn binary(self) -> &'static str {
        match self {
            Service::Inventory => "tracehop-inventory",
            Service::Payment => "tracehop-payment",
            Service::Order => "tracehop-order",
            Service::Loyalty => "tracehop-loyalty",
            Service::Notification => "tracehop-notification",
            Service::Analytics => "tracehop-analytics",
            Service::Sentinel => "tracehop-sentinel",
            Service::Keeper => "tracehop-keeper",
            Service::Gateway => "tracehop-gateway",
        }
    }

    /// The request/reply subjects it serves (its replay subject aside: see
    /// [`Service::replay_subject`]).
    pub const fn serves(self) -> &'static [&'static str] {
        match self {
            Service::Inventory => &[
                subjects::INVENTORY_RESERVE,
                subjects::INVENTORY_COMMIT,
                subjects::INVENTORY_RELEASE,
                subjects::INVENTORY_PRICES,
            ],
            Service::Payment => &[subjects::PAYMENT_CHARGE],
            Service::Order => &[subjects::ORDER_PLACE, subjects::ORDER_GET],
            Service::Analytics => &[subjects::ANALYTICS_SUMMARY],
            Service::Sentinel => &[subjects::SENTINEL_STATUS],
            Service::Keeper => &[subjects::KEEPER_STATS],
            Service::Loyalty | Service::Notification | Service::Gateway => &[],
        }
    }

    /// The PostgreSQL schema it owns, the only one its database role may
    /// use; none for a service without a database.
    pub const fn schema(self) -> Option<&'static str> {
        match self {
            Service::Inventory => Some("inventory"),
            Service::Order => Some("ordering"),
            Service::Payment => Some("payment"),
            Service::Loyalty => Some("loyalty"),
            Service::Notification => Some("notification"),
            Service::Analytics => Some("analytics"),
            Service::Sentinel | Service::Keeper | Service::Gateway => None,
        }
    }

    /// Its PostgreSQL login role, `tracehop_<name>`, for a service with a
    /// schema.
    pub fn database_role(self) -> Option<String> {
        self.schema().map(|_| format!("tracehop_{}", self.name()))
    }

    /// The request/reply subjects it calls (what it may send requests to;
    /// the command's probes and operations aside).
    pub const fn calls(self) -> &'static [&'static str] {
        match self {
            Service::Gateway => &[subjects::ORDER_PLACE, subjects::ORDER_GET, subjects::ANALYTICS_SUMMARY],
            Service::Order => &[
                subjects::INVENTORY_RESERVE,
                subjects::INVENTORY_COMMIT,
                subjects::INVENTORY_RELEASE,
                subjects::PAYMENT_CHARGE,
            ],
            // Premium orders price every item.
            Service::Loyalty => &[subjects::INVENTORY_PRICES],
            Service::Inventory
            | Service::Payment
            | Service::Notification
            | Service::Analytics
            | Service::Sentinel
            | Service::Keeper => &[],
        }
    }

    /// The event subjects it publishes to the streams (through its outbox).
    pub const fn publishes(self) -> &'static [&'static str] {
        match self {
            Service::Order => &[subjects::ORDER_CONFIRMED, subjects::ORDER_FAILED],
            _ => &[],
        }
    }

    /// The durable consumers it owns.
    pub fn consumers(self) -> Vec<ConsumerSpec> {
        let durable = self.name();
        match self {
            // Points for confirmed orders only.
            Service::Loyalty => vec![ConsumerSpec::new(ORDERS_STREAM, durable, &[subjects::ORDER_CONFIRMED])],
            // A mail about every decided order.
            Service::Notification => vec![ConsumerSpec::new(ORDERS_STREAM, durable, &["orders.>"])],
            // Every order event, recorded.
            Service::Analytics => vec![ConsumerSpec::new(ORDERS_STREAM, durable, &["orders.>"])],
            // Voids or refunds the charge of every failed order, so that a
            // charge whose outcome was unknown when the order failed is
            // settled.
            Service::Payment => vec![ConsumerSpec::new(ORDERS_STREAM, durable, &[subjects::ORDER_FAILED])],
            // The keeper reads the span feed through durables of its own,
            // one per partition; they are telemetry's, not the checkout's.
            Service::Inventory | Service::Order | Service::Sentinel | Service::Keeper | Service::Gateway => Vec::new(),
        }
    }

    /// Whether its consumer answers `svc.<name>.replay`: the stream again
    /// through its handler, and the redrive of its dead letters.
    pub const fn replayable(self) -> bool {
        match self {
            Service::Loyalty | Service::Notification | Service::Analytics => true,
            // Payment's consumer settles charges with the card processor:
            // running it again is not a projection rebuild but money moving.
            Service::Payment => false,
            Service::Inventory | Service::Order | Service::Sentinel | Service::Keeper | Service::Gateway => false,
        }
    }

    /// Why its consumer cannot be replayed, for a service that has one but
    /// is not [`Service::replayable`]; `None` otherwise.
    pub const fn not_replayable_because(self) -> Option<&'static str> {
        match self {
            Service::Payment => Some(
                "its consumer settles the charges of failed orders with the card processor: running it again \
                 would move money, not rebuild a projection",
            ),
            _ => None,
        }
    }

    /// How its copies share the work when several run.
    pub const fn instances(self) -> Instances {
        match self {
            Service::Gateway => Instances::Single,
            Service::Sentinel => Instances::Leader,
            Service::Keeper => Instances::Partitioned,
            Service::Inventory
            | Service::Payment
            | Service::Order
            | Service::Loyalty
            | Service::Notification
            | Service::Analytics => Instances::Many,
        }
    }

    /// How readiness is judged beyond subjects and durables.
    pub const fn probe(self) -> Probe {
        match self {
            Service::Gateway => Probe::Http,
            _ => Probe::Messaging,
        }
    }

    /// `svc.<name>.replay` when the service is replayable.
    pub fn replay_subject(self) -> Option<String> {
        self.replayable().then(|| subjects::replay(self.name()))
    }

    /// Every subject it answers on: what it serves plus its replay subject.
    pub fn all_subjects(self) -> Vec<String> {
        self.serves().iter().map(|s| s.to_string()).chain(self.replay_subject()).collect()
    }

    /// The service called `name`.
    pub fn from_name(name: &str) -> Option<Service> {
        Service::ALL.into_iter().find(|service| service.name() == name)
    }

    /// The service that owns the durable consumer `durable`.
    pub fn owning(durable: &str) -> Option<Service> {
        Service::ALL.into_iter().find(|service| service.consumers().iter().any(|spec| spec.durable == durable))
    }

    /// The names of every replayable service, for messages.
    pub fn replayable_names() -> Vec<&'static str> {
        Service::ALL.into_iter().filter(|s| s.replayable()).map(Service::name).collect()
    }
}

/// The names of [`Service::ALL`], in start order.
pub const SERVICE_NAMES: [&str; Service::ALL.len()] = {
    let mut names = [""; Service::ALL.len()];
    let mut i = 0;
    while i < names.len() {
        names[i] = Service::ALL[i].name();
        i += 1;
    }
    names
};

impl std::fmt::Display for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is no service of the catalog.
#[derive(Debug, thiserror::Error)]
#[error("unknown service {name:?}; valid services: {}", SERVICE_NAMES.join(", "))]
pub struct UnknownService {
    pub name: String,
}

impl std::str::FromStr for Service {
    type Err = UnknownService;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Service::from_name(name).ok_or_else(|| UnknownService { name: name.to_string() })
    }
}

/// How many events a consumer handles at once unless its service says
/// otherwise: enough to overlap one event's round trips with the next
/// ones', few enough that a slow handler holds a small batch.
pub const DEFAULT_IN_FLIGHT: usize = 8;

/// A durable consumer: which stream, which subjects, and how deliveries are
/// retried.
#[derive(Clone, Debug)]
pub struct ConsumerSpec {
    pub stream: &'static str,
    /// The durable name; also `messaging.consumer.group.name` on spans.
    pub durable: &'static str,
    pub filter_subjects: Vec<String>,
    /// How long the server waits for an ack before it redelivers.
    pub ack_wait: Duration,
    /// Deliveries before the consumer gives up on a message and dead-letters it.
    pub max_deliver: i64,
    /// Messages one process handles at once ([`DEFAULT_IN_FLIGHT`] unless
    /// a service says otherwise); the pull batch is this many, so that no
    /// message waits in the client, its ack wait running, for a slot to
    /// free. Every handler is idempotent by event id and its effects
    /// commute (a sum, a row per event), so stream order is not needed. One
    /// at a time made a consumer's rate the inverse of one event's latency
    /// (a price request, two statements): on a starved machine that fell
    /// behind a steady 20 orders/s, and a 200-message pull batch outlived
    /// the ack wait.
    pub max_in_flight: usize,
}

impl ConsumerSpec {
    /// A spec with the defaults: 5 deliveries; a consumer that dies with a
    /// message in hand gets it back after the 10 s ack wait. Failed
    /// deliveries back off through the nak delay ([`ConsumerSpec::retry_delay`]),
    /// not through the server's `backoff` list: nats-server 2.9 applies that
    /// list to explicit naks too, overriding their delay.
    pub fn new(stream: &'static str, durable: &'static str, filter_subjects: &[&str]) -> Self {
        Self {
            stream,
            durable,
            filter_subjects: filter_subjects.iter().map(|s| s.to_string()).collect(),
            ack_wait: Duration::from_secs(10),
            max_deliver: 5,
            max_in_flight: DEFAULT_IN_FLIGHT,
        }
    }

    /// The same consumer, handling up to `max_in_flight` messages at once
    /// (at least one).
    pub fn with_max_in_flight(mut self, max_in_flight: usize) -> Self {
        self.max_in_flight = max_in_flight.max(1);
        self
    }

    /// The server-side configuration. No `inactive_threshold`: the server
    /// must never delete a durable whose service is down.
    pub fn config(&self) -> consumer::pull::Config {
        consumer::pull::Config {
            durable_name: Some(self.durable.to_string()),
            description: Some(format!("tracehop {} consumer", self.durable)),
            // nats-server 2.9 ignores `filter_subjects` (plural): one subject
            // goes in `filter_subject`, which every server version honours.
            filter_subject: match self.filter_subjects.as_slice() {
                [one] => one.clone(),
                _ => String::new(),
            },
            filter_subjects: if self.filter_subjects.len() > 1 { self.filter_subjects.clone() } else { Vec::new() },
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            max_deliver: self.max_deliver,
            deliver_policy: consumer::DeliverPolicy::All,
            max_ack_pending: 1000,
            ..Default::default()
        }
    }

    /// Creates the durable consumer if it is missing, or brings its
    /// configuration in line with this spec.
    pub async fn ensure(&self, js: &jetstream::Context) -> Result<(), TopologyError> {
        let stream = js
            .get_stream(self.stream)
            .await
            .map_err(|source| TopologyError::StreamMissing { stream: self.stream, source })?;
        stream
            .create_consumer(self.config())
            .await
            .map_err(|source| TopologyError::Consumer { consumer: self.durable, source })?;
        Ok(())
    }

    /// The nak delay after a failed delivery: 0.5 s, doubling with each
    /// delivery (0.5, 1, 2, 4 s with the default 5 deliveries).
    pub fn retry_delay(&self, delivery_count: i64) -> Duration {
        let exponent = delivery_count.clamp(1, 6) as u32 - 1;
        Duration::from_millis(500 * 2u64.pow(exponent))
    }
}

/// The stream of order events (`orders.confirmed`, `orders.failed`).
pub const ORDERS_STREAM: &str = "ORDERS";
/// How long the ORDERS stream remembers message ids for de-duplication.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// ORDERS: file storage (business events must survive a restart), limits
/// retention (every consumer reads at its own pace; replay needs history),
/// on `replicas` servers ([`Store::Orders`]).
pub fn orders_stream_config(replicas: StreamReplicas) -> stream::Config {
    stream::Config {
        num_replicas: Store::Orders.replicas(replicas),
        name: ORDERS_STREAM.to_string(),
        description: Some("tracehop order events".to_string()),
        subjects: vec!["orders.>".to_string()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        duplicate_window: DUPLICATE_WINDOW,
        max_age: Duration::from_secs(7 * 24 * 3600),
        // Direct gets let the sentinel read the oldest unprocessed event of a
        // consumer without creating consumers of its own.
        allow_direct: true,
        ..Default::default()
    }
}

/// The stream of messages that consumers gave up on, with their reasons.
pub const DEAD_LETTER_STREAM: &str = "DEADLETTER";

/// The subject a consumer's dead letters go to.
pub fn dead_letter_subject(consumer: &str) -> String {
    format!("deadletter.{consumer}")
}

/// DEADLETTER: file storage, kept a month: a dead letter waits for a fix and
/// a redrive; on `replicas` servers ([`Store::DeadLetter`]).
pub fn dead_letter_stream_config(replicas: StreamReplicas) -> stream::Config {
    stream::Config {
        num_replicas: Store::DeadLetter.replicas(replicas),
        name: DEAD_LETTER_STREAM.to_string(),
        description: Some("tracehop dead letters: original headers and payload, plus the reason".to_string()),
        subjects: vec!["deadletter.>".to_string()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        duplicate_window: DUPLICATE_WINDOW,
        max_age: Duration::from_secs(30 * 24 * 3600),
        allow_direct: true,
        ..Default::default()
    }
}

/// Loyalty's durable consumer.
pub fn loyalty_consumer() -> ConsumerSpec {
    only_consumer(Service::Loyalty)
}

/// Notification's durable consumer.
pub fn notification_consumer() -> ConsumerSpec {
    only_consumer(Service::Notification)
}

/// Analytics' durable consumer.
pub fn analytics_consumer() -> ConsumerSpec {
    only_consumer(Service::Analytics)
}

/// Payment's durable consumer.
pub fn payment_consumer() -> ConsumerSpec {
    only_consumer(Service::Payment)
}

fn only_consumer(service: Service) -> ConsumerSpec {
    match service.consumers().as_slice() {
        [one] => one.clone(),
        // The catalog above gives each of these services exactly one; the
        // tests check it.
        other => unreachable!("{service} owns {} durable consumers, not one", other.len()),
    }
}

/// Every consumer that must process the streams' events, in service order.
pub fn expected_consumers() -> Vec<ConsumerSpec> {
    Service::ALL.into_iter().flat_map(Service::consumers).collect()
}

/// Creates or updates the ORDERS stream.
pub async fn ensure_orders_stream(
    js: &jetstream::Context,
    replicas: StreamReplicas,
) -> Result<(), jetstream::context::CreateStreamError> {
    js.create_or_update_stream(orders_stream_config(replicas)).await.map(|_| ())
}

/// Creates the ORDERS and DEADLETTER streams, each on `replicas` servers,
/// and every expected durable consumer (a durable has as many replicas as
/// its stream: the server's default). An existing stream is brought to
/// `replicas`: the count is the operator's, never guessed from the server.
pub async fn ensure_all(js: &jetstream::Context, replicas: StreamReplicas) -> Result<(), TopologyError> {
    ensure_orders_stream(js, replicas)
        .await
        .map_err(|source| TopologyError::Stream { stream: ORDERS_STREAM, source })?;
    js.create_or_update_stream(dead_letter_stream_config(replicas))
        .await
        .map_err(|source| TopologyError::Stream { stream: DEAD_LETTER_STREAM, source })?;
    for spec in expected_consumers() {
        spec.ensure(js).await?;
    }
    Ok(())
}

/// Messages per subject in `stream` under `filter`; empty when unknown.
pub async fn subject_counts<I>(stream: &stream::Stream<I>, filter: &str) -> HashMap<String, u64> {
    let Ok(subjects) = stream.info_with_subjects(filter).await else { return HashMap::new() };
    subjects.map_ok(|(subject, count)| (subject, count as u64)).try_collect().await.unwrap_or_default()
}

/// `TRACEHOP_STREAM_REPLICAS`: on how many servers of a NATS cluster each
/// replicated store of the system lives ([`Store::replicas`] says which
/// follow it). 1 (the default) on a single server; 3 on a three-node
/// cluster, so that any one node may die with nothing lost and nothing
/// stopped (a RAFT group of 3 keeps a quorum of 2). JetStream allows 1 to
/// 5, and no more than the cluster has servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamReplicas(u8);

impl StreamReplicas {
    /// The variable the command reads it from.
    pub const VARIABLE: &str = "TRACEHOP_STREAM_REPLICAS";
    /// One copy: a single server.
    pub const ONE: StreamReplicas = StreamReplicas(1);
    /// JetStream's largest replica count.
    pub const MAX: usize = 5;

    /// `count` copies, when JetStream allows it (1 to [`Self::MAX`]).
    pub fn new(count: usize) -> Result<Self, InvalidReplicas> {
        match u8::try_from(count) {
            Ok(n) if (1..=Self::MAX).contains(&count) => Ok(StreamReplicas(n)),
            _ => Err(InvalidReplicas { value: count.to_string() }),
        }
    }

    /// The count, for a stream's `num_replicas`.
    pub const fn get(self) -> usize {
        self.0 as usize
    }
}

impl Default for StreamReplicas {
    fn default() -> Self {
        Self::ONE
    }
}

impl std::fmt::Display for StreamReplicas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::str::FromStr for StreamReplicas {
    type Err = InvalidReplicas;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidReplicas { value: value.to_string() };
        value.trim().parse::<usize>().map_err(|_| invalid()).and_then(|n| Self::new(n).map_err(|_| invalid()))
    }
}

/// A replica count JetStream would refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "TRACEHOP_STREAM_REPLICAS={value:?} is invalid: it must be a whole number from 1 to 5 (JetStream's limit), and \
     no more than the NATS cluster has servers (1 for a single server, 3 for a three-node cluster)"
)]
pub struct InvalidReplicas {
    pub value: String,
}

/// Every JetStream store of the system: its streams and key-value buckets.
/// [`Store::replicas`] is the one place that says how many copies of each a
/// cluster keeps, and why; whoever creates a store asks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Store {
    /// The order events (file).
    Orders,
    /// The dead letters (file).
    DeadLetter,
    /// The span feed, `SPANS` (memory, bounded).
    SpanFeed,
    /// The kept traces, `KEPT` (file, bounded).
    KeptTraces,
    /// The live scenario switches, `KV_SCENARIOS` (file).
    Scenarios,
    /// The leader leases, `KV_tracehop_leases` (file).
    Leases,
    /// The span pipelines' reports, `KV_tracehop_telemetry` (memory, aged out).
    PipelineReports,
}

impl Store {
    /// Every store.
    pub const ALL: [Store; 7] = [
        Store::Orders,
        Store::DeadLetter,
        Store::SpanFeed,
        Store::KeptTraces,
        Store::Scenarios,
        Store::Leases,
        Store::PipelineReports,
    ];

    /// How many servers hold the store when the operator asked for
    /// `configured` ([`StreamReplicas`]: 1 on one server, 3 on a cluster).
    ///
    /// Every store follows the operator's count; none is left at one copy
    /// on a cluster, for these reasons:
    /// - ORDERS and DEADLETTER: business events and the record of what was
    ///   given up on. An acknowledged event must survive a node, or an
    ///   outbox row marked published points at nothing.
    /// - Leases: a lease on one node makes every leader depend on that node
    ///   (no node, no leader: the sentinel falls silent); replicated, its
    ///   compare-and-set is decided by a RAFT quorum, so two candidates
    ///   never both win across a node failure. A few bytes.
    /// - Scenarios: a switch turned off or a fix turned on must not come
    ///   back undone with a node. A few bytes.
    /// - The span feed: it is memory and high-volume, and tripling it was
    ///   the cost that argued for one copy. But on one node, that node's
    ///   death loses every span it held and every span published until it
    ///   returns: the traces of exactly the incident one wants to read, and
    ///   the keeper's pending decisions with them (a third of node
    ///   failures, whichever node it lands on). Per node a replica costs
    ///   what a single server already holds (`TRACEHOP_SPAN_FEED_BYTES` of
    ///   memory each), and the replication is off the checkout's path (the
    ///   exporter publishes batches in the background). So it replicates.
    ///   Measured in `shared/testkit/tests/cluster.rs` (R1 against R3).
    /// - The kept traces: the errors and slow traces, kept for days: what
    ///   the feed exists to find. Each node holds `TRACEHOP_KEPT_BYTES` of
    ///   disk, as a single server does.
    /// - The span pipelines' reports: memory, a few kilobytes, rewritten
    ///   every few seconds; replicated so that `status` and the services'
    ///   puts do not fail while one node is down.
    pub const fn replicas(self, configured: StreamReplicas) -> usize {
        match self {
            Store::Orders
            | Store::DeadLetter
            | Store::Leases
            | Store::Scenarios
            | Store::SpanFeed
            | Store::KeptTraces
            | Store::PipelineReports => configured.get(),
        }
    }
}

/// A stream or consumer could not be created.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("failed to create stream {stream}")]
    Stream {
        stream: &'static str,
        #[source]
        source: jetstream::context::CreateStreamError,
    },
    #[error("stream {stream} is missing")]
    StreamMissing {
        stream: &'static str,
        #[source]
        source: jetstream::context::GetStreamError,
    },
    #[error("failed to create consumer {consumer}")]
    Consumer {
        consumer: &'static str,
        #[source]
        source: jetstream::stream::ConsumerError,
    },
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// An exhaustive match: a new variant fails to compile here until it is
    /// given a place in [`Service::ALL`], which the test then checks.
    fn position(service: Service) -> usize {
        match service {
            Service::Inventory => 0,
            Service::Payment => 1,
            Service::Order => 2,
            Service::Loyalty => 3,
            Service::Notification => 4,
            Service::Analytics => 5,
            Service::Sentinel => 6,
            Service::Keeper => 7,
            Service::Gateway => 8,
        }
    }

    #[test]
    fn every_service_is_in_the_catalog_once() {
        let positions: Vec<usize> = Service::ALL.iter().map(|s| position(*s)).collect();
        let unique: HashSet<usize> = positions.iter().copied().collect();
        assert_eq!(unique.len(), Service::ALL.len(), "a service is listed twice");
        assert_eq!(unique, (0..Service::ALL.len()).collect(), "a service is missing from Service::ALL");
        for service in Service::ALL {
            assert_eq!(Service::from_name(service.name()), Some(service));
            assert_eq!(service.binary(), format!("tracehop-{}", service.name()));
        }
    }

    #[test]
    fn every_durable_has_one_owner_and_replayable_services_own_one() {
        let consumers = expected_consumers();
        let durables: HashSet<&str> = consumers.iter().map(|c| c.durable).collect();
        assert_eq!(durables.len(), consumers.len(), "a durable is owned twice");
        for service in Service::ALL {
            if service.replayable() {
                assert_eq!(service.consumers().len(), 1, "{service} replays one consumer");
            }
            for spec in service.consumers() {
                assert_eq!(Service::owning(spec.durable), Some(service));
            }
        }
        for spec in [loyalty_consumer(), notification_consumer(), analytics_consumer(), payment_consumer()] {
            assert!(durables.contains(spec.durable));
        }
    }

    #[test]
    fn replicas_are_one_to_five() {
        assert_eq!(StreamReplicas::default().get(), 1);
        assert_eq!("3".parse::<StreamReplicas>().unwrap().get(), 3);
        assert_eq!(" 5 ".parse::<StreamReplicas>().unwrap().get(), 5);
        for bad in ["0", "6", "-1", "three", "", "300"] {
            let error = bad.parse::<StreamReplicas>().unwrap_err();
            assert_eq!(error.value, bad);
            assert!(error.to_string().starts_with(&format!("TRACEHOP_STREAM_REPLICAS={bad:?} is invalid")), "{error}");
        }
        assert!(StreamReplicas::new(0).is_err() && StreamReplicas::new(6).is_err());
    }

    #[test]
    fn the_streams_take_the_replica_count() {
        let three = StreamReplicas::new(3).unwrap();
        assert_eq!(orders_stream_config(three).num_replicas, 3);
        assert_eq!(dead_letter_stream_config(three).num_replicas, 3);
        assert_eq!(orders_stream_config(StreamReplicas::ONE).num_replicas, 1);
        for store in Store::ALL {
            assert_eq!(store.replicas(StreamReplicas::ONE), 1, "{store:?} on a single server");
        }
    }

    #[test]
    fn subjects_are_served_once() {
        let mut seen = HashSet::new();
        for service in Service::ALL {
            for subject in service.all_subjects() {
                assert!(seen.insert(subject.clone()), "{subject} is served twice");
            }
        }
    }
}
