//! Clusters of throwaway servers: a Redis Cluster (masters with replicas) and a NATS cluster
//! with JetStream, every node on spare loopback ports, for the adapters' cluster tests.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::{
    find_binary, http_get, nats_ready, nats_venv, redis_ready, services_dir, wait_until,
    ServerProcess,
};

/// `n` distinct free TCP ports on 127.0.0.1 (all bound at once, then released for the servers
/// to take, so no two of them are the same port).
///
/// # Errors
/// When not enough ports can be bound.
pub fn spare_ports(n: usize) -> Result<Vec<u16>, String> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("no spare loopback port: {e}"))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("no spare loopback port: {e}"))
}

/// Send one command to the Redis server on 127.0.0.1:`port` and return its reply as text: a
/// status, an integer or a bulk string (array replies are not decoded).
///
/// # Errors
/// The server's error reply, or why nothing usable came back within two seconds.
pub fn redis_command(port: u16, args: &[&str]) -> Result<String, String> {
    let s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(300))
        .map_err(|e| format!("port {port}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    let mut request = format!("*{}\r\n", args.len());
    for a in args {
        request.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    (&s).write_all(request.as_bytes())
        .map_err(|e| format!("port {port}: {e}"))?;
    let mut r = BufReader::new(&s);
    let mut line = String::new();
    r.read_line(&mut line)
        .map_err(|e| format!("port {port}: {e}"))?;
    let line = line.trim_end();
    match line.split_at_checked(1) {
        Some(("+" | ":", rest)) => Ok(rest.to_owned()),
        Some(("-", rest)) => Err(rest.to_owned()),
        Some(("$", len)) => {
            let len: usize = len.parse().map_err(|_| format!("bad reply {line:?}"))?;
            let mut body = vec![0u8; len + 2];
            r.read_exact(&mut body)
                .map_err(|e| format!("port {port}: {e}"))?;
            body.truncate(len);
            String::from_utf8(body).map_err(|e| e.to_string())
        }
        _ => Err(format!("unexpected reply {line:?}")),
    }
}

/// Options of [`redis_cluster`].
#[derive(Debug, Clone)]
pub struct RedisClusterOptions {
    /// Masters (default 3, the fewest Redis Cluster accepts).
    pub masters: usize,
    /// Replicas of each master (default 1, so a failover can be tested).
    pub replicas: usize,
    /// `cluster-node-timeout` (default 5 s: long enough that a loaded machine never fails over
    /// by itself; fault tests fail over explicitly with [`RedisCluster::failover`]).
    pub node_timeout: Duration,
}

impl Default for RedisClusterOptions {
    fn default() -> Self {
        Self {
            masters: 3,
            replicas: 1,
            node_timeout: Duration::from_secs(5),
        }
    }
}

/// One node as `CLUSTER NODES` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNode {
    /// The node id.
    pub id: String,
    /// Its client port on 127.0.0.1.
    pub port: u16,
    /// Whether it is a master (else a replica).
    pub master: bool,
    /// The id of its master, for a replica.
    pub master_id: Option<String>,
    /// Whether the cluster considers it failing (`fail` or `fail?`).
    pub failing: bool,
    /// Whether it serves at least one slot.
    pub serves_slots: bool,
    /// The slot ranges it serves (inclusive).
    pub slots: Vec<(u16, u16)>,
}

/// A Redis Cluster of throwaway `redis-server` processes on 127.0.0.1; every node is killed and
/// its data removed on drop.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<ServerProcess>,
}

/// Start a Redis Cluster: `masters × (1 + replicas)` nodes with `cluster-enabled yes` on spare
/// ports (client and bus ports), created with `redis-cli --cluster create … --cluster-replicas`,
/// ready when every node reports `cluster_state:ok`, knows every other node, and every replica's
/// link to its master is up (deadline 30 s).
///
/// # Errors
/// When `redis-server` or `redis-cli` is missing, a node does not start, or the cluster does not
/// become ready in time.
pub fn redis_cluster(options: &RedisClusterOptions) -> Result<RedisCluster, String> {
    let program = find_binary("redis-server", &[PathBuf::from("/usr/bin")])
        .ok_or("redis-server is not installed (cargo xtask test installs it)")?;
    let cli = find_binary("redis-cli", &[PathBuf::from("/usr/bin")])
        .ok_or("redis-cli is not installed (cargo xtask test installs it)")?;
    if options.masters < 3 {
        return Err("a Redis Cluster needs at least 3 masters".to_owned());
    }
    let count = options.masters * (1 + options.replicas);
    let ports = spare_ports(2 * count)?;
    let mut cluster = RedisCluster {
        nodes: Vec::with_capacity(count),
    };
    let timeout_ms = options.node_timeout.as_millis().max(100).to_string();
    for pair in ports.chunks(2) {
        let (port, bus) = (pair[0], pair[1]);
        let node_dir = services_dir().join(format!("redis-cluster-{}-{port}", std::process::id()));
        let mut args: Vec<OsString> = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--cluster-enabled",
            "yes",
            "--cluster-port",
            &bus.to_string(),
            "--cluster-node-timeout",
            &timeout_ms,
            "--cluster-config-file",
            "nodes.conf",
            // A replica may always take over, however long it was cut off from its master.
            "--cluster-replica-validity-factor",
            "0",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        args.push(node_dir.clone().into_os_string());
        let node = ServerProcess::start(
            "redis-server (cluster node)",
            program.clone(),
            args,
            port,
            node_dir,
            redis_ready,
        )?;
        cluster.nodes.push(node);
    }
    let mut create = Command::new(&cli);
    create.arg("--cluster").arg("create");
    for node in &cluster.nodes {
        create.arg(format!("127.0.0.1:{}", node.port()));
    }
    let out = create
        .arg("--cluster-replicas")
        .arg(options.replicas.to_string())
        .arg("--cluster-yes")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", cli.display()))?;
    if !out.status.success() {
        return Err(format!(
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    cluster.wait_ok(Duration::from_secs(30))?;
    Ok(cluster)
}

impl RedisCluster {
    /// Client ports of every node, running or not, in start order.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(ServerProcess::port).collect()
    }

    /// Every node as a seed URL, comma-separated: `redis://127.0.0.1:<port>,…`.
    pub fn url(&self) -> String {
        self.ports()
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node listening on `port`, to kill or restart it.
    pub fn node_mut(&mut self, port: u16) -> Option<&mut ServerProcess> {
        self.nodes.iter_mut().find(|n| n.port() == port)
    }

    /// The cluster as a running node sees it (`CLUSTER NODES`).
    ///
    /// # Errors
    /// When no running node answers.
    pub fn topology(&self) -> Result<Vec<ClusterNode>, String> {
        let mut last = "no node is running".to_owned();
        for node in self.nodes.iter().filter(|n| n.pid().is_some()) {
            match redis_command(node.port(), &["CLUSTER", "NODES"]) {
                Ok(text) => return Ok(parse_cluster_nodes(&text)),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The master serving `key`'s slot (`CLUSTER KEYSLOT`), as a running node sees it.
    ///
    /// # Errors
    /// When no running node answers, or no master serves the slot.
    pub fn master_of(&self, key: &str) -> Result<ClusterNode, String> {
        let port = self
            .nodes
            .iter()
            .find(|n| n.pid().is_some())
            .map(ServerProcess::port)
            .ok_or("no node is running")?;
        let slot: u16 = redis_command(port, &["CLUSTER", "KEYSLOT", key])?
            .parse()
            .map_err(|e| format!("bad CLUSTER KEYSLOT reply: {e}"))?;
        self.topology()?
            .into_iter()
            .find(|n| n.master && n.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
            .ok_or_else(|| format!("no master serves slot {slot}"))
    }

    /// Make the replica on `replica_port` take over its master's slots at once
    /// (`CLUSTER FAILOVER TAKEOVER`: no agreement of the other masters needed, which is what a
    /// test wants right after it killed the master).
    ///
    /// # Errors
    /// The node's error reply.
    pub fn failover(&self, replica_port: u16) -> Result<(), String> {
        redis_command(replica_port, &["CLUSTER", "FAILOVER", "TAKEOVER"]).map(drop)
    }

    /// Wait until every running node reports `cluster_state:ok`, agrees that a non-failing
    /// master serves every slot, and every running replica's link to its master is up.
    ///
    /// # Errors
    /// What was still wrong when `limit` elapsed.
    pub fn wait_ok(&self, limit: Duration) -> Result<(), String> {
        let mut why = String::new();
        let ok = wait_until(limit, || match self.check() {
            Ok(()) => true,
            Err(e) => {
                why = e;
                false
            }
        });
        if ok {
            Ok(())
        } else {
            Err(format!("redis cluster not ready: {why}"))
        }
    }

    fn check(&self) -> Result<(), String> {
        let running: Vec<u16> = self
            .nodes
            .iter()
            .filter(|n| n.pid().is_some())
            .map(ServerProcess::port)
            .collect();
        for &port in &running {
            let info = redis_command(port, &["CLUSTER", "INFO"])?;
            if !info.contains("cluster_state:ok") {
                return Err(format!("node {port}: cluster_state is not ok"));
            }
            let nodes = parse_cluster_nodes(&redis_command(port, &["CLUSTER", "NODES"])?);
            if nodes.len() != self.nodes.len() {
                return Err(format!(
                    "node {port} knows {} of {} nodes",
                    nodes.len(),
                    self.nodes.len()
                ));
            }
            // Every master that serves slots must be running and not failing, as this node sees it.
            if let Some(n) = nodes
                .iter()
                .find(|n| n.master && n.serves_slots && (n.failing || !running.contains(&n.port)))
            {
                return Err(format!("node {port} still routes slots to {}", n.port));
            }
            let me = nodes.iter().find(|n| n.port == port);
            if me.is_some_and(|n| !n.master) {
                let repl = redis_command(port, &["INFO", "replication"])?;
                if !repl.contains("master_link_status:up") {
                    return Err(format!("replica {port}: link to its master is down"));
                }
            }
        }
        Ok(())
    }

    /// The node processes, each killed (and its data removed) when dropped (for `cargo xtask`,
    /// which keeps servers as a list of processes).
    pub fn into_processes(self) -> Vec<ServerProcess> {
        self.nodes
    }
}

/// Parse the text of `CLUSTER NODES`.
fn parse_cluster_nodes(text: &str) -> Vec<ClusterNode> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let addr = f[1].split('@').next()?;
            let port = addr.rsplit(':').next()?.parse().ok()?;
            let flags: Vec<&str> = f[2].split(',').collect();
            Some(ClusterNode {
                id: f[0].to_owned(),
                port,
                master: flags.contains(&"master"),
                master_id: Some(f[3]).filter(|m| *m != "-").map(str::to_owned),
                failing: flags.iter().any(|x| *x == "fail" || *x == "fail?"),
                serves_slots: f.len() > 8,
                slots: f
                    .iter()
                    .skip(8)
                    .filter(|r| !r.starts_with('['))
                    .filter_map(|r| match r.split_once('-') {
                        Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                        None => r.parse().ok().map(|a| (a, a)),
                    })
                    .collect(),
            })
        })
        .collect()
}

/// A NATS cluster of throwaway `nats-server` processes with JetStream on 127.0.0.1; every node
/// is killed and its data removed on drop.
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<ServerProcess>,
    monitors: Vec<u16>,
}

/// Start a NATS cluster of `size` nodes (at least 3 for JetStream R3): each with its own client,
/// route and monitoring port, its own file store, routes to every other node, cluster name
/// `durable-test`; ready when every node's `/healthz` answers 200 and its `/jsz` names a
/// JetStream meta leader (deadline 30 s). The binary is the one [`crate::nats`] uses.
///
/// # Errors
/// When nats-server is not installed, a node does not start, or the cluster does not become
/// ready in time.
pub fn nats_cluster(size: usize) -> Result<NatsCluster, String> {
    let pinned = nats_venv().join("bin").join("nats-server");
    let program = Some(pinned)
        .filter(|p| p.is_file())
        .or_else(|| find_binary("nats-server", &[]))
        .ok_or("nats-server is not installed (cargo xtask test installs it)")?;
    if size < 3 {
        return Err("a JetStream cluster needs at least 3 nodes".to_owned());
    }
    let ports = spare_ports(3 * size)?;
    let (clients, rest) = ports.split_at(size);
    let (routes, monitors) = rest.split_at(size);
    let mut cluster = NatsCluster {
        nodes: Vec::with_capacity(size),
        monitors: monitors.to_vec(),
    };
    let route_list = routes
        .iter()
        .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
        .collect::<Vec<_>>()
        .join(", ");
    for i in 0..size {
        let node_dir = services_dir().join(format!(
            "nats-cluster-{}-{}-n{i}",
            std::process::id(),
            clients[0]
        ));
        std::fs::create_dir_all(&node_dir)
            .map_err(|e| format!("cannot create {}: {e}", node_dir.display()))?;
        let config = node_dir.join("nats.conf");
        let store = node_dir.join("jetstream");
        std::fs::write(
            &config,
            format!(
                "server_name: n{i}\nlisten: \"127.0.0.1:{}\"\nhttp: \"127.0.0.1:{}\"\n\
                 max_payload: 8MB\njetstream {{\n  store_dir: {:?}\n}}\n\
                 cluster {{\n  name: durable-test\n  listen: \"127.0.0.1:{}\"\n  routes: [{route_list}]\n}}\n",
                clients[i],
                monitors[i],
                store.display().to_string(),
                routes[i],
            ),
        )
        .map_err(|e| format!("cannot write {}: {e}", config.display()))?;
        let args = vec![OsString::from("-c"), config.into_os_string()];
        let node = ServerProcess::start(
            "nats-server (cluster node)",
            program.clone(),
            args,
            clients[i],
            node_dir,
            nats_ready,
        )?;
        cluster.nodes.push(node);
    }
    cluster.wait_ready(Duration::from_secs(30))?;
    Ok(cluster)
}

impl NatsCluster {
    /// Client ports of every node, running or not, in start order.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(ServerProcess::port).collect()
    }

    /// Every node's client URL, comma-separated: `nats://127.0.0.1:<port>,…`.
    pub fn url(&self) -> String {
        self.ports()
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Node `i` (start order), to kill or restart it.
    pub fn node_mut(&mut self, i: usize) -> Option<&mut ServerProcess> {
        self.nodes.get_mut(i)
    }

    /// Monitoring (HTTP) port of node `i`.
    pub fn monitor_port(&self, i: usize) -> Option<u16> {
        self.monitors.get(i).copied()
    }

    /// Wait until every running node's `/healthz` answers 200 and its `/jsz` names a meta
    /// leader.
    ///
    /// # Errors
    /// What was still wrong when `limit` elapsed.
    pub fn wait_ready(&self, limit: Duration) -> Result<(), String> {
        let mut why = String::new();
        let ok = wait_until(limit, || {
            for (node, &monitor) in self.nodes.iter().zip(&self.monitors) {
                if node.pid().is_none() {
                    continue;
                }
                match http_get(monitor, "/healthz") {
                    Some((200, _)) => {}
                    other => {
                        why = format!("node {}: /healthz {other:?}", node.port());
                        return false;
                    }
                }
                let leader = http_get(monitor, "/jsz").and_then(|(_, body)| meta_leader(&body));
                if leader.is_none() {
                    why = format!("node {}: no JetStream meta leader", node.port());
                    return false;
                }
            }
            true
        });
        if ok {
            Ok(())
        } else {
            Err(format!("nats cluster not ready: {why}"))
        }
    }

    /// The node processes, each killed (and its data removed) when dropped (for `cargo xtask`).
    pub fn into_processes(self) -> Vec<ServerProcess> {
        self.nodes
    }
}

/// The meta leader named in a `/jsz` body (`"meta_cluster": {… "leader": "n1" …}`), if any.
fn meta_leader(jsz: &str) -> Option<String> {
    let meta = &jsz[jsz.find("\"meta_cluster\"")?..];
    let rest = &meta[meta.find("\"leader\"")? + "\"leader\"".len()..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let rest = rest.strip_prefix('"')?;
    let name = &rest[..rest.find('"')?];
    Some(name.to_owned()).filter(|n| !n.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_lines_are_parsed() {
        let text = "a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460\n\
                    b2 127.0.0.1:7003@17003 slave a1 0 1 1 connected\n\
                    c3 127.0.0.1:7001@17001 master,fail - 0 1 2 disconnected 5461-10922\n";
        let nodes = parse_cluster_nodes(text);
        assert_eq!(nodes.len(), 3);
        assert!(nodes[0].master && nodes[0].serves_slots && !nodes[0].failing);
        assert_eq!(nodes[1].master_id.as_deref(), Some("a1"));
        assert!(!nodes[1].master && !nodes[1].serves_slots);
        assert!(nodes[2].failing && nodes[2].port == 7001);
        assert_eq!(nodes[0].slots, vec![(0, 5460)]);
        assert_eq!(nodes[2].slots, vec![(5461, 10922)]);
    }

    #[test]
    fn the_meta_leader_is_found_in_jsz() {
        let jsz = r#"{"server_id": "x", "meta_cluster": {"name": "durable-test", "leader": "n1", "cluster_size": 3}}"#;
        assert_eq!(meta_leader(jsz).as_deref(), Some("n1"));
        let none = r#"{"meta_cluster": {"name": "durable-test", "cluster_size": 3}}"#;
        assert_eq!(meta_leader(none), None);
        assert_eq!(meta_leader(r#"{"meta_cluster": {"leader": ""}}"#), None);
    }
}
