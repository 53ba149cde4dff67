//! Who owns which partitions of a consumer group, from the group coordinator's description of
//! it: each member's client id and the assignment the group leader gave it.
//!
//! A member that others must reach (the reconciler's instances, which forward reads of a
//! partition to its owner) *advertises* an address by joining with the client id
//! `<client>;advertised=<address>` ([`Membership::advertised`](crate::consume::Membership)).
//! librdkafka cannot attach user data to a member's subscription, which is where Kafka Streams
//! carries its `application.server`; the client id is the one thing of a member the group's
//! description always shows.
use std::collections::BTreeSet;
use std::time::Duration;

use rdkafka::consumer::ConsumerContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _};

use crate::BusError;

/// What separates a client id from the address its member advertises.
const ADVERTISED: &str = ";advertised=";

/// The client id of a member of client `client` advertising `address`.
pub fn advertised_client_id(client: &str, address: &str) -> String {
    format!("{client}{ADVERTISED}{address}")
}

/// The address a member advertises in its client id, if any.
pub fn advertised_of(client_id: &str) -> Option<&str> {
    client_id
        .split_once(ADVERTISED)
        .map(|(_, a)| a)
        .filter(|a| !a.is_empty())
}

/// One member of a group as its coordinator describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The address it advertises ([`advertised_of`]), if any.
    pub advertised: Option<String>,
    /// Its assigned partitions, by topic.
    pub partitions: Vec<(String, i32)>,
}

/// A group as its coordinator describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupView {
    /// Whether the group is `Stable`: between rebalances, every member holding the
    /// assignment listed. In any other state the assignments are stale or empty.
    pub stable: bool,
    /// Its members.
    pub members: Vec<Member>,
}

/// Describes `group` through `client` (any client of the cluster; the group's `Describe` ACL
/// is needed, which reading as a member of it implies). Blocking: call it off the async
/// runtime.
pub fn describe<C: ConsumerContext>(
    client: &BaseConsumer<C>,
    group: &str,
    timeout: Duration,
) -> Result<GroupView, BusError> {
    let list = client
        .fetch_group_list(Some(group), timeout)
        .map_err(|e| BusError::Unavailable(format!("describing group {group}: {e}")))?;
    let Some(info) = list.groups().iter().find(|g| g.name() == group) else {
        return Ok(GroupView {
            stable: false,
            members: Vec::new(),
        });
    };
    let mut members = Vec::with_capacity(info.members().len());
    for m in info.members() {
        let partitions = match m.assignment() {
            Some(bytes) if !bytes.is_empty() => parse_assignment(bytes).map_err(|e| {
                BusError::Unavailable(format!(
                    "group {group}: the assignment of member {} does not parse: {e}",
                    m.id()
                ))
            })?,
            _ => Vec::new(),
        };
        members.push(Member {
            advertised: advertised_of(m.client_id()).map(str::to_owned),
            partitions,
        });
    }
    Ok(GroupView {
        stable: info.state() == "Stable",
        members,
    })
}

/// The partitions of a consumer protocol assignment (`ConsumerProtocolAssignment`, every
/// version: a version, then per topic its name and partitions, then user data, which is left
/// alone).
pub fn parse_assignment(bytes: &[u8]) -> Result<Vec<(String, i32)>, String> {
    let mut r = Reader(bytes);
    let _version = r.i16()?;
    let topics = r.count()?;
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for _ in 0..topics {
        let len = usize::try_from(r.i16()?).map_err(|_| "a topic without a name".to_owned())?;
        let topic = std::str::from_utf8(r.take(len)?)
            .map_err(|_| "a topic name that is not UTF-8".to_owned())?
            .to_owned();
        for _ in 0..r.count()? {
            let p = r.i32()?;
            if seen.insert((topic.clone(), p)) {
                out.push((topic.clone(), p));
            }
        }
    }
    Ok(out)
}

/// Big-endian reads off the front of a slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err(format!(
                "cut short: {n} bytes wanted, {} left",
                self.0.len()
            ));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn i16(&mut self) -> Result<i16, String> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self) -> Result<i32, String> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// An array's length; -1 (null) is none.
    fn count(&mut self) -> Result<usize, String> {
        let n = self.i32()?;
        if n < 0 {
            return Ok(0);
        }
        let n = usize::try_from(n).map_err(|e| e.to_string())?;
        // Each element takes at least four bytes: a count beyond what is left is corrupt,
        // not a reason to reserve memory for it.
        if n > self.0.len() / 4 {
            return Err(format!("{n} elements in {} bytes", self.0.len()));
        }
        Ok(n)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// An assignment encoded as the Java client and librdkafka encode it.
    fn encode(version: i16, topics: &[(&str, &[i32])], user_data: Option<&[u8]>) -> Vec<u8> {
        let mut b = version.to_be_bytes().to_vec();
        b.extend(i32::try_from(topics.len()).unwrap().to_be_bytes());
        for (t, ps) in topics {
            b.extend(i16::try_from(t.len()).unwrap().to_be_bytes());
            b.extend(t.as_bytes());
            b.extend(i32::try_from(ps.len()).unwrap().to_be_bytes());
            for p in *ps {
                b.extend(p.to_be_bytes());
            }
        }
        match user_data {
            Some(d) => {
                b.extend(i32::try_from(d.len()).unwrap().to_be_bytes());
                b.extend(d);
            }
            None => b.extend((-1i32).to_be_bytes()),
        }
        b
    }

    #[test]
    fn an_assignment_gives_its_partitions_by_topic_in_every_version() {
        for version in 0..=3 {
            let bytes = encode(
                version,
                &[("education", &[0, 2]), ("health", &[0, 2]), ("empty", &[])],
                Some(b"user data"),
            );
            assert_eq!(
                parse_assignment(&bytes).unwrap(),
                vec![
                    ("education".to_owned(), 0),
                    ("education".to_owned(), 2),
                    ("health".to_owned(), 0),
                    ("health".to_owned(), 2),
                ]
            );
        }
        assert_eq!(parse_assignment(&encode(0, &[], None)).unwrap(), Vec::new());
    }

    #[test]
    fn a_cut_or_corrupt_assignment_is_an_error_not_a_panic() {
        let bytes = encode(1, &[("education", &[0, 1, 2])], None);
        for cut in [1, 5, 8, 12, 20] {
            assert!(parse_assignment(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut huge = encode(1, &[], None);
        huge[2..6].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(parse_assignment(&huge).is_err());
    }

    #[test]
    fn the_advertised_address_travels_in_the_client_id() {
        let id = advertised_client_id("ponte-reconciler", "10.0.0.7:50051");
        assert_eq!(id, "ponte-reconciler;advertised=10.0.0.7:50051");
        assert_eq!(advertised_of(&id), Some("10.0.0.7:50051"));
        assert_eq!(advertised_of("ponte-reconciler"), None);
        assert_eq!(advertised_of("ponte-reconciler;advertised="), None);
    }
}
