"""The local CQL store: Apache Cassandra 5.0 nodes with small heaps, one on 127.0.0.1, or three on
127.0.0.1, .2 and .3 (same ports, one loopback address each) as one cluster."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from devstack import procs, tools

# What Cassandra's own jvm17-server.options opens up for Java 17.
JVM17_OPTIONS = """
-Djdk.attach.allowAttachSelf=true
--add-exports java.base/jdk.internal.misc=ALL-UNNAMED
--add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED
--add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED
--add-exports java.rmi/sun.rmi.server=ALL-UNNAMED
--add-exports java.sql/java.sql=ALL-UNNAMED
--add-exports java.base/java.lang.ref=ALL-UNNAMED
--add-exports jdk.unsupported/sun.misc=ALL-UNNAMED
--add-exports jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED
--add-exports jdk.attach/sun.tools.attach=ALL-UNNAMED
--add-opens java.base/java.lang.module=ALL-UNNAMED
--add-opens java.base/jdk.internal.loader=ALL-UNNAMED
--add-opens java.base/jdk.internal.ref=ALL-UNNAMED
--add-opens java.base/jdk.internal.reflect=ALL-UNNAMED
--add-opens java.base/jdk.internal.math=ALL-UNNAMED
--add-opens java.base/jdk.internal.module=ALL-UNNAMED
--add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED
--add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED
--add-opens java.base/sun.nio.ch=ALL-UNNAMED
--add-opens java.base/java.io=ALL-UNNAMED
--add-opens java.base/java.lang.reflect=ALL-UNNAMED
--add-opens jdk.compiler/com.sun.tools.javac=ALL-UNNAMED
--add-opens java.base/java.lang=ALL-UNNAMED
--add-opens java.base/java.util=ALL-UNNAMED
-Dio.netty.tryReflectionSetAccessible=true
""".split()  # noqa: SIM905 (kept in the file's own one-option-a-line form)

LOGBACK = """<configuration>
  <appender name="OUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%d{ISO8601} %-5level [%thread] %logger{20} %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="OUT"/></root>
</configuration>
"""


# Runs nodetool commands (separated by ";") in one JVM: java -cp JARS NodeToolBatch.java JMX_PORT CMD... ; CMD... ;
NODETOOL_BATCH = """
import java.io.IOException;
import java.util.ArrayList;
import java.util.List;
import org.apache.cassandra.tools.INodeProbeFactory;
import org.apache.cassandra.tools.NodeProbe;
import org.apache.cassandra.tools.NodeTool;
import org.apache.cassandra.tools.Output;

public class NodeToolBatch implements INodeProbeFactory {
    public NodeProbe create(String host, int port) throws IOException { return new NodeProbe(host, port); }

    public NodeProbe create(String host, int port, String user, String password) throws IOException {
        return new NodeProbe(host, port, user, password);
    }

    public static void main(String[] args) {
        List<String> command = new ArrayList<>(List.of("-h", "127.0.0.1", "-p", args[0]));
        for (int i = 1; i < args.length; i++) {
            if (!args[i].equals(";")) { command.add(args[i]); continue; }
            int rc = new NodeTool(new NodeToolBatch(), Output.CONSOLE).execute(command.toArray(new String[0]));
            if (rc != 0) System.exit(rc);
            command = new ArrayList<>(List.of("-h", "127.0.0.1", "-p", args[0]));
        }
        System.exit(0);
    }
}
"""


class CqlNode:
    def __init__(
        self,
        home: Path,
        log: Path,
        *,
        native_port: int,
        storage_port: int,
        jmx_port: int,
        heap_mb: int = 1024,
        address: str = "127.0.0.1",
        seeds: tuple[str, ...] = ("127.0.0.1",),
        in_cluster: bool = False,
        incremental_backups: bool = False,
    ) -> None:
        self.home, self.log = home, log
        self.native_port, self.storage_port, self.jmx_port = native_port, storage_port, jmx_port
        self.heap_mb = heap_mb
        # Every node of the local cluster is a seed: a node that restarts while another is down
        # still finds a live one to gossip with.
        self.address, self.seeds = address, seeds
        # A new cluster's nodes start together, each taking its tokens without streaming (nothing
        # to stream yet); a node that restarts rejoins with its own data and catches up by hints.
        self.in_cluster = in_cluster
        self.pid_file = home / "pid"
        # Every flushed sstable also hard-linked into its table's backups/ directory, which
        # devstack/cql_backup.py copies into the repository between snapshots.
        self.incremental_backups = incremental_backups

    @property
    def data_dir(self) -> Path:
        """Where the tables' sstables live: data_dir/KEYSPACE/TABLE-ID/."""
        return self.home / "data" / "data"

    def nodetool(self, *args: str, timeout: float = 600) -> str:
        """Cassandra's nodetool (its class in the same jars) against this node's JMX port."""
        return self.nodetool_batch([list(args)], timeout=timeout)

    def nodetool_batch(self, commands: list[list[str]], timeout: float = 600) -> str:
        """Several nodetool commands in one JVM (each of its own costs seconds to start), in order;
        stops at the first that fails."""
        lib = tools.cassandra_lib()
        source = self.home / "NodeToolBatch.java"
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_text(NODETOOL_BATCH)
        classpath = os.pathsep.join(sorted(str(p) for p in lib.glob("*.jar")))
        argv = ["java", "-Xmx256m", *JVM17_OPTIONS, "-cp", classpath, str(source)]
        argv += [str(self.jmx_port)]
        for command in commands:
            argv += [*command, ";"]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            said = (out.stdout + out.stderr)[-2000:]
            raise RuntimeError(f"nodetool {commands} on {self.address} failed (exit {out.returncode}): {said}")
        return out.stdout

    def pid(self) -> int | None:
        pid = procs.read_pid(self.pid_file)
        return pid if procs.alive(pid) else None

    def _write_config(self) -> Path:
        conf = self.home / "conf"
        conf.mkdir(parents=True, exist_ok=True)
        d = self.home / "data"
        yaml_text = f"""cluster_name: runtrack-local
num_tokens: 16
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
data_file_directories: [{d}/data]
commitlog_directory: {d}/commitlog
saved_caches_directory: {d}/saved_caches
hints_directory: {d}/hints
cdc_raw_directory: {d}/cdc_raw
commitlog_sync: periodic
commitlog_sync_period: 10000ms
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "{",".join(f"{seed}:{self.storage_port}" for seed in self.seeds)}"
listen_address: {self.address}
rpc_address: {self.address}
storage_port: {self.storage_port}
ssl_storage_port: {self.storage_port + 1}
native_transport_port: {self.native_port}
start_native_transport: true
auto_snapshot: false
incremental_backups: {"true" if self.incremental_backups else "false"}
concurrent_compactors: 1
auto_bootstrap: {"false" if self.in_cluster else "true"}
hinted_handoff_enabled: true
max_hint_window: 3h
# A replica writes the points of many runs in one unlogged batch (tracking_service/writer.py):
# 100 points of up to 100 runs, about 10 KiB.
batch_size_warn_threshold: 64KiB
batch_size_fail_threshold: 640KiB
unlogged_batch_across_partitions_warn_threshold: 1000
"""
        (conf / "cassandra.yaml").write_text(yaml_text)
        (conf / "logback.xml").write_text(LOGBACK)
        return conf

    def start(self) -> int:
        pid = self.pid()
        if pid:
            return pid
        lib = tools.cassandra_lib()
        conf = self._write_config()
        classpath = os.pathsep.join([str(conf), *sorted(str(p) for p in lib.glob("*.jar"))])
        argv = [
            # In a local cluster three JVMs share this machine's cores with the replicas: each sizes
            # its pools for one core, and yields the CPU to the services (separate machines in production).
            *(["nice", "-n", "5"] if self.in_cluster else []),
            "java",
            *(["-XX:ActiveProcessorCount=1"] if self.in_cluster else []),
            f"-Xms{self.heap_mb // 2}m",
            f"-Xmx{self.heap_mb}m",
            "-XX:+UseG1GC",
            "-XX:+ExitOnOutOfMemoryError",
            "-Xss512k",
            *JVM17_OPTIONS,
            f"-Dcassandra.config=file://{conf}/cassandra.yaml",
            f"-Dlogback.configurationFile={conf}/logback.xml",
            f"-Dcassandra.storagedir={self.home / 'data'}",
            f"-Dcassandra.jmx.local.port={self.jmx_port}",
            "-Dcassandra-foreground=yes",
            "-Dcassandra.skip_wait_for_gossip_to_settle=0",
            "-Dcassandra.ring_delay_ms=100",
            *(["-Dcassandra.consistent.rangemovement=false"] if self.in_cluster else []),
            "-cp",
            classpath,
            "org.apache.cassandra.service.CassandraDaemon",
        ]
        return procs.start(argv, log=self.log, pid_file=self.pid_file)

    def wait_ready(self, timeout: float = 180.0) -> None:
        procs.wait_until(
            f"CQL node on {self.address}:{self.native_port}",
            lambda: procs.port_open(self.native_port, self.address),
            timeout,
            log=self.log,
            pid=self.pid(),
        )

    def stop(self) -> None:
        procs.stop(self.pid(), timeout=30)

    def kill(self) -> None:
        """SIGKILL: the node dies as a crashed machine would, mid-write."""
        procs.stop(self.pid(), timeout=1, sig=signal.SIGKILL)
