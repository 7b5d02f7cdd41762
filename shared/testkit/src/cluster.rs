//! A real three-node NATS cluster per test: three `nats-server` processes
//! on free client and route ports of 127.0.0.1, each with its own store,
//! all with the keys and accounts of [`crate::NatsServer`] (the system's
//! own configuration). A node can be killed (SIGKILL) and restarted on the
//! same ports and store, and the node that leads a stream can be found, so
//! that a test kills exactly the leader.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use async_nats::jetstream::{self, stream};
use tempfile::TempDir;
use tokio::time::Instant;
use tracehop_launcher::nats_server::{self, CLUSTER_NAME, ClusterNode, ServerConfig};
use tracehop_messaging::topology::StreamReplicas;

use crate::nats::{Configuration, ServerProcess, TestNats};

/// How many nodes a [`NatsCluster`] has: the smallest cluster in which a
/// replicated stream (R3) survives the loss of any one node.
pub const CLUSTER_NODES: usize = 3;

/// Three `nats-server`s forming one JetStream cluster. Nodes are numbered
/// 0, 1, 2; node `i`'s `server_name` is `tracehop-<i+1>` ([`NatsCluster::node_name`]).
/// Clients, given every node, come from [`TestNats`] (`connect_command`,
/// `connect_service`, `connect_as`). Every process is killed on drop.
pub struct NatsCluster {
    // Declared before `dir`: the processes die before their folders go.
    nodes: Vec<ServerProcess>,
    dir: TempDir,
}

impl NatsCluster {
    /// Starts three nodes and waits (up to 30 s) until JetStream has a meta
    /// leader and can place a stream on all three (one is created with R3
    /// and deleted).
    pub async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("tracehop-nats-cluster-").tempdir()?;
        let keys_dir = dir.path().join("keys");
        nats_server::ensure_keys(&keys_dir)?;
        let ports = distinct_free_ports(2 * CLUSTER_NODES);
        let (client_ports, route_ports) = ports.split_at(CLUSTER_NODES);
        let mut nodes = Vec::with_capacity(CLUSTER_NODES);
        for node in 0..CLUSTER_NODES {
            let node_dir = dir.path().join(format!("node-{}", node + 1));
            let routes = (0..CLUSTER_NODES)
                .filter(|other| *other != node)
                .map(|other| format!("nats-route://127.0.0.1:{}", route_ports[other]))
                .collect();
            let config = ServerConfig::new(client_ports[node], node_dir.join("store")).in_cluster(ClusterNode {
                server_name: Self::node_name(node),
                cluster_name: CLUSTER_NAME.to_string(),
                route_port: route_ports[node],
                routes,
            });
            nodes.push(ServerProcess::new(Configuration::Generated(config), node_dir, keys_dir.clone()));
        }
        let mut cluster = Self { nodes, dir };
        for node in &mut cluster.nodes {
            node.spawn().await?;
        }
        cluster.wait_for_jetstream(Duration::from_secs(30)).await?;
        Ok(cluster)
    }

    async fn wait_for_jetstream(&self, timeout: Duration) -> anyhow::Result<()> {
        let js = jetstream::new(self.connect_command().await?);
        let probe = stream::Config {
            name: "TESTKIT_CLUSTER_READY".to_string(),
            subjects: vec!["testkit.cluster.ready".to_string()],
            storage: stream::StorageType::Memory,
            num_replicas: CLUSTER_NODES,
            ..Default::default()
        };
        let deadline = Instant::now() + timeout;
        let mut last_error = String::from("no answer");
        while Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_secs(3), js.create_stream(probe.clone())).await {
                Ok(Ok(_)) => {
                    js.delete_stream(&probe.name).await.context("failed to delete the readiness probe's stream")?;
                    return Ok(());
                }
                Ok(Err(error)) => last_error = error.to_string(),
                Err(_) => last_error = "timed out".to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("the NATS cluster could not place an R3 stream within {timeout:?} ({last_error}); logs:\n{}", self.logs())
    }

    /// `server_name` of node `node`: `tracehop-<node+1>`.
    pub fn node_name(node: usize) -> String {
        format!("tracehop-{}", node + 1)
    }

    /// The node whose `server_name` is `name`.
    pub fn node_named(&self, name: &str) -> Option<usize> {
        (0..self.nodes.len()).find(|node| Self::node_name(*node) == name)
    }

    /// `nats://127.0.0.1:<port>` of every node, comma-separated: `NATS_URL`.
    pub fn url(&self) -> String {
        (0..self.nodes.len()).map(|node| self.node_url(node)).collect::<Vec<_>>().join(",")
    }

    /// `nats://127.0.0.1:<port>` of one node.
    pub fn node_url(&self, node: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[node].port())
    }

    /// The folder of every user's seed (the same keys on every node).
    pub fn keys_dir(&self) -> PathBuf {
        self.dir.path().join("keys")
    }

    /// Node `node`'s process id, while it runs.
    pub fn pid(&self, node: usize) -> Option<u32> {
        self.nodes[node].pid()
    }

    /// Node `node`'s log.
    pub fn log_path(&self, node: usize) -> PathBuf {
        self.nodes[node].log_path()
    }

    /// Kills node `node` (SIGKILL), as a crash would.
    pub fn kill(&mut self, node: usize) {
        self.nodes[node].kill();
    }

    /// Kills node `node` if it runs, and starts it again on the same client
    /// and route ports with the same store; returns once it accepts
    /// connections (it catches up with the others in the background: see
    /// [`NatsCluster::wait_caught_up`]).
    pub async fn restart(&mut self, node: usize) -> anyhow::Result<()> {
        self.nodes[node].kill();
        self.nodes[node].spawn().await
    }

    /// The permission violations in every node's log, each line prefixed
    /// with its node's name.
    pub fn violations(&self) -> Vec<String> {
        (0..self.nodes.len())
            .flat_map(|node| {
                self.nodes[node].violations().into_iter().map(move |line| format!("{}: {line}", Self::node_name(node)))
            })
            .collect()
    }

    /// The last lines of every node's log, for a failing test's message.
    pub fn logs(&self) -> String {
        (0..self.nodes.len())
            .map(|node| {
                let log = std::fs::read_to_string(self.log_path(node)).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                format!("--- {} ---\n{}", Self::node_name(node), tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The node that leads `stream` now, from its stream info (`cluster.leader`
    /// is a `server_name`); `None` while it has no leader.
    pub async fn leader_of(&self, js: &jetstream::Context, stream: &str) -> anyhow::Result<Option<usize>> {
        let info = js.get_stream(stream).await.with_context(|| format!("failed to read stream {stream}"))?;
        let leader = info.cached_info().cluster.as_ref().and_then(|cluster| cluster.leader.clone());
        Ok(leader.and_then(|name| self.node_named(&name)))
    }

    /// Waits until `stream` has a leader other than `not` (a node just
    /// killed, say), and returns it.
    pub async fn wait_for_leader(
        &self,
        js: &jetstream::Context,
        stream: &str,
        not: Option<usize>,
        timeout: Duration,
    ) -> anyhow::Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let answer = tokio::time::timeout(Duration::from_secs(2), self.leader_of(js, stream)).await;
            if let Ok(Ok(Some(leader))) = answer
                && Some(leader) != not
            {
                return Ok(leader);
            }
            if Instant::now() >= deadline {
                bail!("stream {stream} had no new leader within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `stream`'s leader sees every other node as a current
    /// replica, none offline and none behind: a restarted node has caught
    /// up. Returns the stream's info then.
    pub async fn wait_caught_up(
        &self,
        js: &jetstream::Context,
        stream: &str,
        timeout: Duration,
    ) -> anyhow::Result<stream::Info> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no answer");
        loop {
            if let Ok(Ok(info)) = tokio::time::timeout(Duration::from_secs(2), js.get_stream(stream)).await {
                let info = info.cached_info().clone();
                if let Some(cluster) = &info.cluster {
                    let replicas = &cluster.replicas;
                    let all_current = cluster.leader.is_some()
                        && replicas.len() + 1 == info.config.num_replicas
                        && replicas.iter().all(|peer| peer.current && !peer.offline && peer.lag.unwrap_or(0) == 0);
                    if all_current {
                        return Ok(info);
                    }
                    last = format!("leader {:?}, replicas {replicas:?}", cluster.leader);
                }
            }
            if Instant::now() >= deadline {
                bail!("stream {stream}'s replicas did not catch up within {timeout:?}: {last}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl TestNats for NatsCluster {
    fn url(&self) -> String {
        NatsCluster::url(self)
    }

    fn keys_dir(&self) -> PathBuf {
        NatsCluster::keys_dir(self)
    }

    fn violations(&self) -> Vec<String> {
        NatsCluster::violations(self)
    }

    fn stream_replicas(&self) -> StreamReplicas {
        StreamReplicas::new(CLUSTER_NODES).expect("a cluster's size is a valid replica count")
    }
}

/// `count` ports, each free a moment ago, no two alike.
fn distinct_free_ports(count: usize) -> Vec<u16> {
    let mut ports = Vec::with_capacity(count);
    while ports.len() < count {
        let port = crate::free_port();
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    ports
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `deploy/nats-cluster.conf`, as compose runs it on each node, but with
    /// its hosts and ports rewritten to free ones on 127.0.0.1 and its store
    /// in `store`; without `sync_interval` for a server older than 2.10,
    /// which refuses it. Every rewrite must find its text, so that a change
    /// to the file's shape fails here rather than going unchecked.
    fn deploy_config_for_this_machine(
        shipped: &str,
        client_port: u16,
        route_ports: &[u16],
        monitor_port: u16,
        store: &std::path::Path,
    ) -> String {
        let mut text = shipped.to_string();
        let mut rewrite = |from: &str, to: &str| {
            assert!(text.contains(from), "deploy/nats-cluster.conf no longer has {from:?}");
            text = text.replace(from, to);
        };
        rewrite("port: 4222", &format!("port: {client_port}"));
        rewrite("http_port: 8222", &format!("http_port: {monitor_port}"));
        rewrite("store_dir: /data", &format!("store_dir: {:?}", store.display().to_string()));
        rewrite("listen: 0.0.0.0:6222", "listen: 127.0.0.1:ROUTE_PORT");
        rewrite("nats-route://nats:6222", &format!("nats-route://127.0.0.1:{}", route_ports[0]));
        rewrite("nats-route://nats-2:6222", &format!("nats-route://127.0.0.1:{}", route_ports[1]));
        rewrite("nats-route://nats-3:6222", &format!("nats-route://127.0.0.1:{}", route_ports[2]));
        if !crate::supports_sync_always() {
            rewrite("  sync_interval: always\n", "");
        }
        text
    }

    /// The shipped cluster configuration, on three real nats-servers of
    /// the version on the PATH: they form a cluster that places an R3
    /// stream, with the shipped users (a command key creates it).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deploy_cluster_config_forms_a_cluster() {
        let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
        let shipped = std::fs::read_to_string(deploy.join("nats-cluster.conf")).unwrap();
        let accounts = std::fs::read_to_string(deploy.join("nats-accounts.conf")).unwrap();
        let dir = tempfile::Builder::new().prefix("tracehop-deploy-cluster-").tempdir().unwrap();
        let keys_dir = dir.path().join("keys");
        nats_server::ensure_keys(&keys_dir).unwrap();
        let ports = distinct_free_ports(3 * CLUSTER_NODES);
        let (client_ports, rest) = ports.split_at(CLUSTER_NODES);
        let (route_ports, monitor_ports) = rest.split_at(CLUSTER_NODES);
        let mut nodes = Vec::new();
        for node in 0..CLUSTER_NODES {
            let node_dir = dir.path().join(format!("nats-{}", node + 1));
            std::fs::create_dir_all(&node_dir).unwrap();
            std::fs::write(node_dir.join("nats-accounts.conf"), &accounts).unwrap();
            let text = deploy_config_for_this_machine(
                &shipped,
                client_ports[node],
                route_ports,
                monitor_ports[node],
                &node_dir.join("store"),
            )
            .replace("ROUTE_PORT", &route_ports[node].to_string());
            let path = node_dir.join("nats-cluster.conf");
            std::fs::write(&path, text).unwrap();
            let env = vec![("TRACEHOP_NATS_SERVER_NAME".to_string(), format!("nats-{}", node + 1))];
            let config = Configuration::File { path, port: client_ports[node], env };
            nodes.push(ServerProcess::new(config, node_dir, keys_dir.clone()));
        }
        let mut cluster = NatsCluster { nodes, dir };
        for node in &mut cluster.nodes {
            node.spawn().await.expect("a node starts from the shipped configuration");
        }
        cluster.wait_for_jetstream(Duration::from_secs(30)).await.expect("the nodes form a JetStream cluster");
        let js = jetstream::new(cluster.connect_command().await.unwrap());
        js.create_stream(stream::Config {
            name: "DEPLOY_CHECK".to_string(),
            subjects: vec!["deploy.check".to_string()],
            num_replicas: 3,
            ..Default::default()
        })
        .await
        .unwrap();
        let info = js.get_stream("DEPLOY_CHECK").await.unwrap().cached_info().clone();
        let group = info.cluster.expect("cluster info");
        assert_eq!(group.name.as_deref(), Some("tracehop"));
        let mut members: Vec<String> = group.replicas.iter().map(|peer| peer.name.clone()).collect();
        members.extend(group.leader);
        members.sort();
        assert_eq!(members, ["nats-1", "nats-2", "nats-3"]);
        let anonymous = async_nats::ConnectOptions::new().connect(cluster.node_url(1)).await;
        assert!(anonymous.is_err(), "the shipped users admit nobody anonymous");
    }
}
