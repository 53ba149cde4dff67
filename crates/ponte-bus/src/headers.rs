//! Kafka headers every Ponte event carries, so tools can route and trace without decoding.
use rdkafka::message::{Header, Headers, OwnedHeaders};

/// The `record` case of the event, e.g. `school_attendance`.
pub const EVENT_TYPE: &str = "ponte-event-type";
/// The payload schema, e.g. `ponte.events.v1`.
pub const SCHEMA: &str = "ponte-schema";
/// The source system of the record.
pub const SOURCE: &str = "ponte-source";
/// A trace id that follows the record through every service.
pub const TRACE_ID: &str = "ponte-trace-id";

/// The headers of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventHeaders {
    pub event_type: String,
    pub schema: String,
    pub source: String,
    pub trace_id: String,
}

impl EventHeaders {
    pub fn to_kafka(&self) -> OwnedHeaders {
        Self::kafka(&self.event_type, &self.schema, &self.source, &self.trace_id)
    }

    /// The four headers as Kafka headers, from borrowed values (nothing copied but into the
    /// headers themselves).
    pub fn kafka(event_type: &str, schema: &str, source: &str, trace_id: &str) -> OwnedHeaders {
        OwnedHeaders::new_with_capacity(4)
            .insert(Header {
                key: EVENT_TYPE,
                value: Some(event_type.as_bytes()),
            })
            .insert(Header {
                key: SCHEMA,
                value: Some(schema.as_bytes()),
            })
            .insert(Header {
                key: SOURCE,
                value: Some(source.as_bytes()),
            })
            .insert(Header {
                key: TRACE_ID,
                value: Some(trace_id.as_bytes()),
            })
    }

    /// The value of one header of a consumed message, without copying it; `None` when the
    /// message has no such header (or it has no value).
    pub fn value<'a, H: Headers>(headers: Option<&'a H>, key: &str) -> Option<&'a [u8]> {
        headers?.iter().find(|h| h.key == key).and_then(|h| h.value)
    }

    /// Reads Ponte headers back from a consumed message; missing ones are empty.
    pub fn from_kafka<H: Headers>(headers: Option<&H>) -> Self {
        let mut out = EventHeaders {
            event_type: String::new(),
            schema: String::new(),
            source: String::new(),
            trace_id: String::new(),
        };
        if let Some(h) = headers {
            for header in h.iter() {
                let value = header
                    .value
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default();
                match header.key {
                    EVENT_TYPE => out.event_type = value,
                    SCHEMA => out.schema = value,
                    SOURCE => out.source = value,
                    TRACE_ID => out.trace_id = value,
                    _ => {}
                }
            }
        }
        out
    }
}
