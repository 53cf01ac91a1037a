"""A real single-node Apache Kafka broker (KRaft mode) run from the official Maven Central jars.

The jars are fetched once into a cache with `mvn dependency:copy-dependencies` (the machine has
Java and Maven but no Kafka distribution). The broker keeps its data and logs in a state folder
of its own, so the local stack and each test suite can run brokers side by side on other ports.

Optionally (`sasl_port` and `sasl_users`) it also opens a SASL_PLAINTEXT listener with PLAIN users,
a real authenticating broker to try the platform's Kafka security settings (`kafka.client_options`)
against; the PLAINTEXT listener stays for the broker itself.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from precise.paths import cache_dir
from precise.stack.process import (
    StackError,
    log_size,
    port_in_use,
    recorded_process,
    require_free_ports,
    start_service,
    stop_recorded,
)

KAFKA_VERSION = "4.1.1"
_POM = """<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>io.precise</groupId>
  <artifactId>precise-kafka-broker</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>{kafka}</version>
    </dependency>
    <!-- scala-logging pulls slf4j-api 1.7, which cannot see the log4j2 binding: pin 2.x -->
    <dependency>
      <groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId><version>2.0.17</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j2-impl</artifactId>
      <version>2.24.3</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>2.24.3</version>
    </dependency>
  </dependencies>
</project>
"""
_LOG4J2 = """status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {log_dir}/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.state.name = state.change.logger
logger.state.level = WARN
"""


def kafka_jars(version: str = KAFKA_VERSION, quiet: bool = True) -> Path:
    """The folder of broker jars for `version`, fetched from Maven Central on first use."""
    target = cache_dir("kafka-jars") / version
    if (target / ".complete").is_file():
        return target
    if shutil.which("mvn") is None:
        raise StackError("Maven (mvn) is needed once to fetch the Kafka jars; install it (apt-get install maven)")
    with tempfile.TemporaryDirectory(prefix="kafka-pom-") as tmp:
        pom = Path(tmp) / "pom.xml"
        pom.write_text(_POM.format(kafka=version))
        staging = target.with_name(f"{version}.partial")
        shutil.rmtree(staging, ignore_errors=True)
        cmd = ["mvn", "-B", "-f", str(pom), "dependency:copy-dependencies",
               f"-DoutputDirectory={staging}", "-DincludeScope=runtime"]
        if quiet:
            cmd.insert(1, "-q")
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise StackError(f"fetching Kafka {version} jars failed:\n{result.stdout[-3000:]}{result.stderr[-2000:]}")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    (target / ".complete").write_text(version)
    return target


@dataclass
class KafkaBroker:
    """One broker+controller on loopback, its state (data, logs, pid) under `state_dir`."""

    state_dir: Path
    port: int = 9092
    controller_port: int = 9093
    host: str = "127.0.0.1"
    heap: str = "512m"
    version: str = KAFKA_VERSION
    sasl_port: int | None = None  # a SASL_PLAINTEXT listener (mechanism PLAIN) on this port
    sasl_users: dict[str, str] = field(default_factory=dict)  # its users: name -> password

    def __post_init__(self) -> None:
        if self.sasl_port is not None and not self.sasl_users:
            raise StackError("a SASL listener needs at least one user (sasl_users)")
        for name, password in self.sasl_users.items():
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or not re.fullmatch(r"[^\"\\\s;]+", password):
                raise StackError(f"SASL user {name!r}: names are letters, digits, _ . -; passwords have no quotes, "
                                 f"backslashes, spaces or semicolons")

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def sasl_bootstrap(self) -> str:
        """The SASL_PLAINTEXT listener's address (a broker started with `sasl_port`)."""
        if self.sasl_port is None:
            raise StackError("this broker has no SASL listener (sasl_port)")
        return f"{self.host}:{self.sasl_port}"

    @property
    def pid_path(self) -> Path:
        return self.state_dir / "kafka.pid"

    @property
    def log_path(self) -> Path:
        return self.state_dir / "logs" / "server.log"

    def running(self) -> bool:
        return recorded_process(self.pid_path) is not None

    def _write_config(self) -> Path:
        data = self.state_dir / "data"
        listeners = f"PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}"
        protocols = "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
        sasl = {}
        if self.sasl_port is not None:
            listeners += f",SASL_PLAINTEXT://{self.host}:{self.sasl_port}"
            protocols += ",SASL_PLAINTEXT:SASL_PLAINTEXT"
            users = " ".join(f'user_{name}="{password}"' for name, password in sorted(self.sasl_users.items()))
            sasl = {"sasl.enabled.mechanisms": "PLAIN",
                    "listener.name.sasl_plaintext.sasl.enabled.mechanisms": "PLAIN",
                    "listener.name.sasl_plaintext.plain.sasl.jaas.config":
                        f"org.apache.kafka.common.security.plain.PlainLoginModule required {users};"}
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"{self.host}:{self.controller_port}",
            "listeners": listeners,
            "advertised.listeners": listeners,
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": protocols,
            "log.dirs": str(data),
            "num.partitions": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "false",
            "message.max.bytes": str(2 * 1024 * 1024),
            **sasl,
        }
        config = self.state_dir / "server.properties"
        config.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (self.state_dir / "log4j2.properties").write_text(_LOG4J2.format(log_dir=self.log_path.parent))
        return config

    def start(self, timeout: float = 90.0) -> None:
        """Start the broker (idempotent) and wait until it answers metadata requests."""
        if self.running():
            return
        java = shutil.which("java")
        if java is None:
            raise StackError("java is not on PATH; Kafka 4 needs Java 17+ (apt-get install openjdk-17-jre-headless)")
        ports = {"Kafka broker": self.port, "Kafka controller": self.controller_port}
        if self.sasl_port is not None:
            ports["Kafka SASL listener"] = self.sasl_port
        require_free_ports(self.host, ports,
                           "stop it or choose other Kafka ports (kafka.port / kafka.controller_port in the "
                           "stack config)")
        jars = kafka_jars(self.version)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        classpath = f"{jars}/*"
        if not (self.state_dir / "data" / "meta.properties").is_file():
            cluster_id = uuid.uuid4().hex[:22]
            fmt = subprocess.run(
                [java, "-cp", classpath, "kafka.tools.StorageTool", "format", "--standalone",
                 "-t", cluster_id, "-c", str(config)],
                capture_output=True, text=True,
            )
            if fmt.returncode != 0:
                raise StackError(f"formatting Kafka storage failed:\n{fmt.stdout[-2000:]}{fmt.stderr[-2000:]}")
        cmd = [java, f"-Xmx{self.heap}", f"-Xms{self.heap}", "-XX:+UseG1GC",
               f"-Dkafka.logs.dir={self.log_path.parent}",
               f"-Dlog4j2.configurationFile={self.state_dir / 'log4j2.properties'}",
               "-cp", classpath, "kafka.Kafka", str(config)]
        # The log appends across restarts: only lines written after this start count as ready.
        log_offset = log_size(self.log_path)
        stdout_log = self.state_dir / "logs" / "stdout.log"
        start_service(cmd, f"Kafka broker on {self.bootstrap}", stdout_log, self.pid_path,
                      lambda: self._ready(log_offset), timeout, logs=[self.log_path, stdout_log])

    def _ready(self, log_offset: int) -> bool:
        if not port_in_use(self.host, self.port) or not self.log_path.is_file():
            return False
        with open(self.log_path, "rb") as log:
            log.seek(log_offset)
            return b"Kafka Server started" in log.read()

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the broker this object started (by its recorded pid); True if one was running."""
        return stop_recorded(self.pid_path, timeout)
