//! Who may do what on NATS, derived from the catalog ([`crate::topology`]):
//! one NATS user per service, plus the `command` (the `tracehop` CLI, the
//! operator's tool), each allowed only the subjects it must use.
//!
//! - [`NatsUser`]: the users; each has its own reply inbox prefix
//!   (`_INBOX.<user>`), so that nobody can read another's replies.
//! - [`NatsUser::permissions`]: what it may publish and subscribe, from what
//!   the catalog says it serves, calls, publishes and consumes.
//! - [`accounts_config`]: the `accounts` block of nats-server's configuration,
//!   users and permissions, as shipped in `deploy/nats-accounts.conf`. Each
//!   user is an nkey whose *public* key the server reads from its environment
//!   (`TRACEHOP_NKEY_<USER>`): the file holds no secret.
//! - [`NatsCredentials`]: a user's nkey seed, from a file of the keys folder
//!   (`TRACEHOP_NATS_KEYS/<user>.nk`) or the environment (`NATS_NKEY`).
//!
//! The JetStream API is scoped by stream and consumer: a service may read
//! the consumers it owns, walk (with ephemeral consumers) only the streams it
//! replays, and never touch another service's durable. What the server does
//! not let permissions express, and so remains possible: a replayable
//! service's ephemeral consumer on its stream may see the stream's other
//! subjects, and on DEADLETTER the other consumers' dead letters.

use std::path::Path;

use tracehop_proto::subjects;

use crate::topology::{ConsumerSpec, DEAD_LETTER_STREAM, Service, dead_letter_subject, expected_consumers};

/// The key-value bucket's backing stream and subjects (the scenario
/// switches; `tracehop_scenarios::BUCKET`).
const SCENARIO_STREAM: &str = "KV_SCENARIOS";
const SCENARIO_SUBJECTS: &str = "$KV.SCENARIOS.>";
/// The span feed and the kept-traces store (`tracehop_spanfeed`).
const SPAN_STREAM: &str = "SPANS";
const KEPT_STREAM: &str = "KEPT";
const KEPT_SUBJECTS: &str = "kept.>";

/// A user of the system's NATS server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NatsUser {
    /// A service of the catalog.
    Service(Service),
    /// The `tracehop` command: prepares streams and consumers, reads status
    /// and traces, replays, flips scenarios. It may not publish events,
    /// spans, dead letters or alerts.
    Command,
}

/// What a user may publish and subscribe to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Permissions {
    pub publish_allow: Vec<String>,
    /// Carved out of `publish_allow`: other services' durables.
    pub publish_deny: Vec<String>,
    pub subscribe_allow: Vec<String>,
}

impl NatsUser {
    /// Every user: the services in catalog order, then the command.
    pub fn all() -> Vec<NatsUser> {
        Service::ALL.into_iter().map(NatsUser::Service).chain([NatsUser::Command]).collect()
    }

    /// The user's name: the service's, or `command`.
    pub fn name(self) -> &'static str {
        match self {
            NatsUser::Service(service) => service.name(),
            NatsUser::Command => "command",
        }
    }

    /// `_INBOX.<name>`: where its replies come, and nobody else's.
    pub fn inbox_prefix(self) -> String {
        format!("_INBOX.{}", self.name())
    }

    /// The environment variable that gives nats-server this user's public
    /// nkey: `TRACEHOP_NKEY_<NAME>`.
    pub fn public_key_variable(self) -> String {
        format!("TRACEHOP_NKEY_{}", self.name().to_ascii_uppercase())
    }

    /// The file, in a keys folder, that holds this user's seed.
    pub fn seed_file_name(self) -> String {
        format!("{}.nk", self.name())
    }

    /// What it may publish and subscribe to.
    pub fn permissions(self) -> Permissions {
        let mut p = Permissions::default();
        p.subscribe_allow.push(format!("{}.>", self.inbox_prefix()));
        let service = match self {
            NatsUser::Command => return command_permissions(p),
            NatsUser::Service(service) => service,
        };
        // Everyone writes its own spans, and (re)creates the feed: it lives
        // in the server's memory, and a restart of the server loses it.
        p.publish_allow.push(format!("spans.*.*.{}", service.name()));
        for action in ["INFO", "CREATE", "UPDATE"] {
            p.publish_allow.push(js_api(&format!("STREAM.{action}.{SPAN_STREAM}")));
        }
        // Everyone reads the scenario switches.
        read_scenarios(&mut p);
        // Everyone puts its span pipelines' report under its own name, and
        // (re)creates the bucket, a memory stream like the feed.
        let telemetry = tracehop_telemetry::health::BUCKET;
        p.publish_allow.push(format!("$KV.{telemetry}.{}.>", service.name()));
        for action in ["INFO", "CREATE"] {
            p.publish_allow.push(js_api(&format!("STREAM.{action}.KV_{telemetry}")));
        }

        // A responder hears its subjects and answers into the inboxes of
        // those who may call it: the services whose calls it serves, and
        // the command (probes, replays, status). Named inboxes rather than
        // `allow_responses`, whose grant the server forgets when a
        // connection is re-made, so that a request in flight across a
        // server restart could not be answered.
        let subjects = service.all_subjects();
        if !subjects.is_empty() {
            let callers = Service::ALL
                .into_iter()
                .filter(|caller| caller.calls().iter().any(|called| subjects.iter().any(|s| s == called)))
                .map(NatsUser::Service)
                .chain([NatsUser::Command]);
            p.publish_allow.extend(callers.map(|caller| format!("{}.>", caller.inbox_prefix())));
        }
        p.subscribe_allow.extend(subjects);
        p.publish_allow.extend(service.calls().iter().map(|s| s.to_string()));
        p.publish_allow.extend(service.publishes().iter().map(|s| s.to_string()));
        for spec in service.consumers() {
            own_durable(&mut p, &spec);
        }
        if service.replayable() {
            for spec in service.consumers() {
                walk_stream(&mut p, spec.stream, Some(service));
                walk_stream(&mut p, DEAD_LETTER_STREAM, Some(service));
            }
            // A dead letter points at its event, which a redrive reads.
            for spec in service.consumers() {
                p.publish_allow.push(js_api(&format!("STREAM.MSG.GET.{}", spec.stream)));
            }
            // A redriven dead letter is deleted once applied.
            p.publish_allow.push(js_api(&format!("STREAM.MSG.DELETE.{DEAD_LETTER_STREAM}")));
            // Progress of a replay goes to the inbox the command named.
            p.publish_allow.push(format!("{}.>", NatsUser::Command.inbox_prefix()));
        }
        if service.instances() == crate::topology::Instances::Leader {
            lease(&mut p, service);
        }
        match service {
            Service::Sentinel => sentinel(&mut p),
            Service::Keeper => keeper(&mut p),
            _ => {}
        }
        dedup(&mut p.publish_allow);
        dedup(&mut p.publish_deny);
        dedup(&mut p.subscribe_allow);
        p
    }
}

impl std::fmt::Display for NatsUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn js_api(rest: &str) -> String {
    format!("$JS.API.{rest}")
}

/// A durable it owns: create or update it, read its state, pull, ack, and
/// dead-letter what it gives up on.
fn own_durable(p: &mut Permissions, spec: &ConsumerSpec) {
    let (stream, durable) = (spec.stream, spec.durable);
    p.publish_allow.extend([
        js_api(&format!("STREAM.INFO.{stream}")),
        js_api(&format!("CONSUMER.CREATE.{stream}.{durable}")),
        js_api(&format!("CONSUMER.CREATE.{stream}.{durable}.>")),
        js_api(&format!("CONSUMER.INFO.{stream}.{durable}")),
        js_api(&format!("CONSUMER.MSG.NEXT.{stream}.{durable}")),
        format!("$JS.ACK.{stream}.{durable}.>"),
        dead_letter_subject(durable),
    ]);
}

/// Campaigning for and renewing its own lease, and nobody else's: the
/// bucket's stream (created by whoever needs it first), its own key's
/// value, and direct gets of that key.
fn lease(p: &mut Permissions, service: Service) {
    let bucket = crate::lease::BUCKET;
    let key = format!("$KV.{bucket}.{}", service.name());
    p.publish_allow.extend([
        js_api(&format!("STREAM.INFO.KV_{bucket}")),
        js_api(&format!("STREAM.CREATE.KV_{bucket}")),
        js_api(&format!("DIRECT.GET.KV_{bucket}.{key}")),
        js_api(&format!("STREAM.MSG.GET.KV_{bucket}")),
        key,
    ]);
}

/// Reading `stream` through ephemeral (ordered) consumers of its own, whose
/// names the client makes up; never through another's durable of it.
fn walk_stream(p: &mut Permissions, stream: &str, walker: Option<Service>) {
    deny_others_durables(p, stream, walker);
    p.publish_allow.extend([
        js_api(&format!("STREAM.INFO.{stream}")),
        js_api(&format!("CONSUMER.CREATE.{stream}")),
        js_api(&format!("CONSUMER.CREATE.{stream}.>")),
        js_api(&format!("CONSUMER.INFO.{stream}.*")),
        js_api(&format!("CONSUMER.DELETE.{stream}.*")),
        js_api(&format!("CONSUMER.MSG.NEXT.{stream}.*")),
    ]);
}

/// Reading the scenario switches: the bucket's stream, its values, and a
/// watch (an ordered push consumer with flow control).
fn read_scenarios(p: &mut Permissions) {
    walk_stream(p, SCENARIO_STREAM, None);
    p.publish_allow.extend([
        js_api(&format!("DIRECT.GET.{SCENARIO_STREAM}")),
        js_api(&format!("DIRECT.GET.{SCENARIO_STREAM}.>")),
        js_api(&format!("STREAM.MSG.GET.{SCENARIO_STREAM}")),
        format!("$JS.FC.{SCENARIO_STREAM}.>"),
    ]);
}

/// The sentinel reads every expected consumer's state and the events it
/// has not processed, reads dead letters, hears of deliveries given up on,
/// and raises alerts. It changes nothing in JetStream.
fn sentinel(p: &mut Permissions) {
    for spec in expected_consumers() {
        p.publish_allow.extend([
            js_api(&format!("STREAM.INFO.{}", spec.stream)),
            js_api(&format!("CONSUMER.INFO.{}.{}", spec.stream, spec.durable)),
            js_api(&format!("DIRECT.GET.{}", spec.stream)),
            js_api(&format!("DIRECT.GET.{}.>", spec.stream)),
            js_api(&format!("STREAM.MSG.GET.{}", spec.stream)),
        ]);
    }
    p.publish_allow.extend([
        js_api(&format!("STREAM.INFO.{DEAD_LETTER_STREAM}")),
        js_api(&format!("DIRECT.GET.{DEAD_LETTER_STREAM}")),
        js_api(&format!("DIRECT.GET.{DEAD_LETTER_STREAM}.>")),
        format!("{}.>", subjects::ALERTS_PREFIX),
    ]);
    p.subscribe_allow.push("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>".to_string());
}

/// The keeper reads the span feed through durables of its own (one per
/// partition, no acks), reads traces back, and writes the kept store.
fn keeper(p: &mut Permissions) {
    walk_stream(p, SPAN_STREAM, Some(Service::Keeper));
    walk_stream(p, KEPT_STREAM, Some(Service::Keeper));
    for stream in [SPAN_STREAM, KEPT_STREAM] {
        p.publish_allow.extend([js_api(&format!("DIRECT.GET.{stream}")), js_api(&format!("DIRECT.GET.{stream}.>"))]);
    }
    p.publish_allow.push(KEPT_SUBJECTS.to_string());
}

/// The command administers JetStream, calls the services' subjects (probes,
/// replay, status, stats), flips scenarios and hears alerts. It publishes
/// no event, span, dead letter or alert of its own.
fn command_permissions(mut p: Permissions) -> Permissions {
    p.publish_allow.extend([
        "$JS.API.>".to_string(),
        format!("$JS.FC.{SCENARIO_STREAM}.>"),
        format!("$JS.FC.KV_{}.>", tracehop_telemetry::health::BUCKET),
        SCENARIO_SUBJECTS.to_string(),
        "svc.>".to_string(),
    ]);
    p.subscribe_allow.push(format!("{}.>", subjects::ALERTS_PREFIX));
    p
}

/// Carves the durables of `stream` that `walker` does not own out of its
/// wildcards on the stream.
fn deny_others_durables(p: &mut Permissions, stream: &str, walker: Option<Service>) {
    let others = expected_consumers()
        .into_iter()
        .filter(|spec| spec.stream == stream && Service::owning(spec.durable) != walker);
    for spec in others {
        let durable = spec.durable;
        p.publish_deny.extend([
            js_api(&format!("CONSUMER.INFO.{stream}.{durable}")),
            js_api(&format!("CONSUMER.CREATE.{stream}.{durable}")),
            js_api(&format!("CONSUMER.CREATE.{stream}.{durable}.>")),
            js_api(&format!("CONSUMER.DELETE.{stream}.{durable}")),
            js_api(&format!("CONSUMER.MSG.NEXT.{stream}.{durable}")),
        ]);
    }
}

fn dedup(list: &mut Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    list.retain(|item| seen.insert(item.clone()));
}

/// The account every user belongs to (JetStream enabled).
pub const ACCOUNT: &str = "TRACEHOP";

/// The `accounts` block of nats-server's configuration: one account with
/// JetStream, one nkey user per [`NatsUser`], each with its permissions.
/// `deploy/nats-accounts.conf` is this text (a test keeps them equal).
pub fn accounts_config() -> String {
    let mut out = String::new();
    out.push_str(
        "# tracehop's NATS users and what each may do. GENERATED from the catalog\n\
         # (shared/messaging/src/topology.rs) by tracehop_messaging::access::accounts_config;\n\
         # `cargo test -p tracehop-messaging` fails when this file is out of date\n\
         # (TRACEHOP_WRITE_NATS_ACCOUNTS=1 rewrites it).\n\
         #\n\
         # Every user is an nkey: the server reads each public key from its\n\
         # environment (TRACEHOP_NKEY_<USER>), the seeds stay with their owners.\n\
         # Nobody connects without a key: there is no anonymous user.\n",
    );
    out.push_str(&format!("accounts {{\n  {ACCOUNT}: {{\n    jetstream: enabled\n    users: [\n"));
    for user in NatsUser::all() {
        let p = user.permissions();
        out.push_str(&format!("      # {user}\n      {{\n        nkey: ${}\n", user.public_key_variable()));
        out.push_str("        permissions: {\n");
        out.push_str(&format!("          publish: {{\n            allow: {}\n", list(&p.publish_allow, 12)));
        if !p.publish_deny.is_empty() {
            out.push_str(&format!("            deny: {}\n", list(&p.publish_deny, 12)));
        }
        out.push_str("          }\n");
        out.push_str(&format!(
            "          subscribe: {{\n            allow: {}\n          }}\n",
            list(&p.subscribe_allow, 12)
        ));
        out.push_str("        }\n      }\n");
    }
    out.push_str("    ]\n  }\n}\n");
    out
}

fn list(items: &[String], indent: usize) -> String {
    let pad = " ".repeat(indent + 2);
    let body: Vec<String> = items.iter().map(|item| format!("{pad}\"{item}\"")).collect();
    format!("[\n{}\n{}]", body.join("\n"), " ".repeat(indent))
}

/// An nkey seed, which `Debug` never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Seed(pub String);

impl std::fmt::Debug for Seed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Seed(***)")
    }
}

/// How a user proves who it is to NATS.
#[derive(Clone)]
pub enum NatsCredentials {
    /// No credentials: for a server without authorization (a developer's
    /// `nats-server -js` on 4222).
    Anonymous,
    /// An nkey seed (`SU...`).
    Seed(String),
}

impl std::fmt::Debug for NatsCredentials {
    // Never print a seed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NatsCredentials::Anonymous => f.write_str("Anonymous"),
            NatsCredentials::Seed(_) => f.write_str("Seed(***)"),
        }
    }
}

/// A user's credentials could not be read.
#[derive(Debug, thiserror::Error)]
#[error("failed to read the NATS key of {user} from {path}")]
pub struct CredentialsError {
    pub user: String,
    pub path: String,
    #[source]
    pub source: std::io::Error,
}

impl NatsCredentials {
    /// `seed` (the `NATS_NKEY` setting) when given, else the user's file in
    /// `keys_dir` (the `TRACEHOP_NATS_KEYS` setting) when given, else none.
    pub fn load(user: NatsUser, keys_dir: Option<&Path>, seed: Option<&Seed>) -> Result<Self, CredentialsError> {
        if let Some(seed) = seed.map(|seed| seed.0.trim()).filter(|seed| !seed.is_empty()) {
            return Ok(NatsCredentials::Seed(seed.to_string()));
        }
        let Some(dir) = keys_dir else { return Ok(NatsCredentials::Anonymous) };
        let path = dir.join(user.seed_file_name());
        let seed = std::fs::read_to_string(&path).map_err(|source| CredentialsError {
            user: user.name().to_string(),
            path: path.display().to_string(),
            source,
        })?;
        Ok(NatsCredentials::Seed(seed.trim().to_string()))
    }
}

/// Connect options for `user`: its name, its inbox prefix, its key.
pub fn connect_options(user: NatsUser, credentials: &NatsCredentials) -> async_nats::ConnectOptions {
    let options = match credentials {
        NatsCredentials::Anonymous => async_nats::ConnectOptions::new(),
        NatsCredentials::Seed(seed) => async_nats::ConnectOptions::new().nkey(seed.clone()),
    };
    options.name(format!("tracehop-{user}")).custom_inbox_prefix(user.inbox_prefix())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_accounts_file_is_generated_from_the_catalog() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/nats-accounts.conf");
        let generated = accounts_config();
        if std::env::var_os("TRACEHOP_WRITE_NATS_ACCOUNTS").is_some() {
            std::fs::write(path, &generated).unwrap();
        }
        let shipped = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            shipped == generated,
            "deploy/nats-accounts.conf is out of date: run TRACEHOP_WRITE_NATS_ACCOUNTS=1 cargo test -p \
             tracehop-messaging access"
        );
    }

    #[test]
    fn only_order_publishes_events_and_only_payment_hears_charges() {
        for user in NatsUser::all() {
            let p = user.permissions();
            let publishes_events = p.publish_allow.iter().any(|s| s.starts_with("orders."));
            assert_eq!(publishes_events, user == NatsUser::Service(Service::Order), "{user}");
            let hears_charges = p.subscribe_allow.iter().any(|s| s == subjects::PAYMENT_CHARGE);
            assert_eq!(hears_charges, user == NatsUser::Service(Service::Payment), "{user}");
            assert!(!p.subscribe_allow.iter().any(|s| s == "_INBOX.>" || s == ">"), "{user} hears every inbox");
            assert!(!p.publish_allow.iter().any(|s| s == ">" || s == "_INBOX.>"), "{user} publishes anywhere");
        }
    }

    #[test]
    fn a_service_writes_only_its_own_spans() {
        for service in Service::ALL {
            let spans: Vec<String> = NatsUser::Service(service)
                .permissions()
                .publish_allow
                .into_iter()
                .filter(|s| s.starts_with("spans."))
                .collect();
            assert_eq!(spans, vec![format!("spans.*.*.{service}")]);
        }
        assert!(!NatsUser::Command.permissions().publish_allow.iter().any(|s| s.starts_with("spans")));
    }
}
