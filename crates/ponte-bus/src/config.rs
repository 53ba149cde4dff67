//! How a Ponte process reaches Kafka.
use std::collections::BTreeMap;

use rdkafka::ClientConfig;
use serde::Deserialize;

/// The `[kafka]` section of Ponte's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list of brokers.
    pub bootstrap_servers: String,
    /// How long a produced record may wait for the broker's acknowledgement, including
    /// retries, before the write is reported as failed (`message.timeout.ms`).
    pub message_timeout_ms: u64,
    /// Extra librdkafka properties passed through as they are — TLS and SASL settings for a
    /// real cluster go here (`security.protocol`, `ssl.ca.location`, `sasl.mechanism`, …).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

impl KafkaConfig {
    /// A librdkafka config with the bootstrap servers, the pass-through properties and a
    /// client id naming the Ponte service.
    pub fn client_config(&self, client_id: &str) -> ClientConfig {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &self.bootstrap_servers)
            .set("client.id", client_id);
        for (k, v) in &self.properties {
            cfg.set(k, v);
        }
        cfg
    }
}
