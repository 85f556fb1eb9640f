//! A Node as the route cache reads it (pure): decoded leniently, so that no
//! value on one node can fail the list or the watch of all of them, and
//! what it says about its route ([`RouteNode::route`], [`Blocker`]).

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
/// The condition type cloud route controllers set.
pub const CONDITION: &str = "NetworkUnavailable";
/// The reason of a created route (Kubernetes' route controller and
/// Gardener's aws-custom-route-controller).
pub const DEFAULT_REASON: &str = "RouteCreated";

/// How much of a value read from a node a blocker keeps (and shows).
pub(crate) const MAX_TEXT: usize = 100;

/// Why a node blocks the switch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "why", rename_all = "camelCase")]
pub enum Blocker {
    /// The node has no `NetworkUnavailable` condition at all.
    NoCondition,
    /// `NetworkUnavailable=True` with reason `NoRouteCreated`: the route
    /// controller tried and failed.
    NoRouteCreated,
    /// Any other status/reason pair.
    Other { status: String, reason: String },
    /// The node has `count` `NetworkUnavailable` conditions and this one
    /// (the first that does not say the route exists) blocks.
    OneOfSeveral {
        count: usize,
        status: String,
        reason: String,
    },
    /// Every `NetworkUnavailable` condition says the route exists, but this
    /// `lastTransitionTime` cannot be read as a time (out of range, or not
    /// a time at all): when the route appeared is unknown.
    UnreadableTime { time: String },
    /// Part of the node's status cannot be read at all.
    Unreadable { what: String },
}

fn status_reason(f: &mut fmt::Formatter<'_>, status: &str, reason: &str) -> fmt::Result {
    if status == "True" && reason == "NoRouteCreated" {
        return write!(f, "NoRouteCreated");
    }
    let reason = if reason.is_empty() {
        "no reason"
    } else {
        reason
    };
    if status.is_empty() {
        write!(f, "{CONDITION} with no status ({reason})")
    } else {
        write!(f, "{CONDITION}={status} ({reason})")
    }
}

impl fmt::Display for Blocker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Blocker::NoCondition => write!(f, "no {CONDITION} condition"),
            Blocker::NoRouteCreated => write!(f, "NoRouteCreated"),
            Blocker::Other { status, reason } => status_reason(f, status, reason),
            Blocker::OneOfSeveral {
                count,
                status,
                reason,
            } => {
                status_reason(f, status, reason)?;
                write!(f, " in one of its {count} {CONDITION} conditions")
            }
            Blocker::UnreadableTime { time } => {
                write!(f, "{CONDITION} lastTransitionTime {time:?} is unreadable")
            }
            Blocker::Unreadable { what } => write!(f, "{what} is unreadable"),
        }
    }
}

/// At most [`MAX_TEXT`] characters of a value read from a node: a blocker
/// is kept per node, and a hostile value must not make it large.
fn clip(s: &str) -> String {
    match s.char_indices().nth(MAX_TEXT) {
        None => s.to_string(),
        Some((end, _)) => format!("{}…", &s[..end]),
    }
}

// ---------------------------------------------------------------------------
// Reading a Node leniently.

/// A Node as the route cache reads it; the node watch decodes this instead
/// of k8s-openapi's `Node`.
///
/// Decoding never fails because of what one node holds. Only what the cache
/// needs is read: the name, resourceVersion and uid, whether a deletion
/// timestamp is present, and the `NetworkUnavailable` conditions' status,
/// reason and `lastTransitionTime`, each from any JSON value (a time stays
/// the string it was sent as; it is parsed later, and an unreadable one
/// makes the node a blocker). Every other field is skipped unread. So a
/// time the API server accepts but jiff's `Timestamp` cannot hold
/// (`9999-12-31T23:59:59Z`), in a condition or anywhere else
/// (`creationTimestamp`, `managedFields[].time`, other conditions), cannot
/// fail the list or the watch of all nodes. The object is transient: the
/// cache keeps a [`crate::cluster::routes::NodeRoute`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteNode {
    /// Only `name`, `resourceVersion` and `uid`. `kube::Resource` needs an
    /// `ObjectMeta` (the watch reads the resourceVersion from it), but none
    /// of its timestamps is decoded: some are written by clients
    /// (`managedFields[].time`), and the cache needs none of their values.
    pub metadata: ObjectMeta,
    /// `metadata.deletionTimestamp` is present (its value is not read).
    pub deleting: bool,
    /// The node's `NetworkUnavailable` conditions, in their order.
    pub conditions: Vec<RouteCondition>,
    /// What of the node's status could not be read (then it blocks).
    pub unreadable: Option<String>,
}

/// One `NetworkUnavailable` condition, as sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteCondition {
    pub status: String,
    pub reason: Option<String>,
    pub last_transition_time: Option<String>,
}

impl kube::Resource for RouteNode {
    type DynamicType = ();
    type Scope = k8s_openapi::ClusterResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        <Node as k8s_openapi::Resource>::KIND.into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        <Node as k8s_openapi::Resource>::GROUP.into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        <Node as k8s_openapi::Resource>::VERSION.into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        <Node as k8s_openapi::Resource>::URL_PATH_SEGMENT.into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// A typed Node (tests, benches, callers that already have one) in the
/// cache's view. Its times are in jiff's range, or it would not exist.
impl From<&Node> for RouteNode {
    fn from(node: &Node) -> Self {
        let conditions = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .filter(|c| c.type_ == CONDITION)
            .map(|c| RouteCondition {
                status: c.status.clone(),
                reason: c.reason.clone(),
                last_transition_time: c.last_transition_time.as_ref().map(|t| t.0.to_string()),
            })
            .collect();
        RouteNode {
            metadata: ObjectMeta {
                name: node.metadata.name.clone(),
                resource_version: node.metadata.resource_version.clone(),
                uid: node.metadata.uid.clone(),
                ..Default::default()
            },
            deleting: node.metadata.deletion_timestamp.is_some(),
            conditions,
            unreadable: None,
        }
    }
}

impl From<Node> for RouteNode {
    fn from(node: Node) -> Self {
        RouteNode::from(&node)
    }
}

/// A field read from any JSON value.
#[derive(Debug, Default)]
enum Field<T> {
    #[default]
    Absent,
    /// Present, but not the JSON type expected (named here).
    Odd(&'static str),
    Value(T),
}

/// The leaves: a string as is, null as `None`, any other value as its JSON
/// text (which never matches what the cache looks for, so it blocks).
fn text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(v.to_owned()))
        }
        fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
            Ok(Some(v))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(Some("[...]".into()))
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(Some("{...}".into()))
        }
    }
    d.deserialize_any(V)
}

/// What a non-object, non-list JSON value is, for a message.
macro_rules! odd_scalars {
    ($t:ty) => {
        fn visit_unit<E: de::Error>(self) -> Result<$t, E> {
            Ok(Field::Absent)
        }
        fn visit_none<E: de::Error>(self) -> Result<$t, E> {
            Ok(Field::Absent)
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<$t, E> {
            Ok(Field::Odd("a boolean"))
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<$t, E> {
            Ok(Field::Odd("a number"))
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<$t, E> {
            Ok(Field::Odd("a number"))
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<$t, E> {
            Ok(Field::Odd("a number"))
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<$t, E> {
            Ok(Field::Odd("a string"))
        }
    };
}

/// An object decoded as `T` (whose fields are lenient themselves); any
/// other JSON value is skipped and marked odd.
impl<'de, T: Deserialize<'de>> Deserialize<'de> for Field<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Field<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            odd_scalars!(Field<T>);
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Field<T>, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Field::Odd("a list"))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Field<T>, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Field::Value)
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// A list of `T`; any other JSON value is skipped and marked odd.
fn list<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Field<Vec<T>>, D::Error> {
    struct V<T>(PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
        type Value = Field<Vec<T>>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("any JSON value")
        }
        odd_scalars!(Field<Vec<T>>);
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut items = Vec::new();
            while let Some(item) = seq.next_element()? {
                items.push(item);
            }
            Ok(Field::Value(items))
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(Field::Odd("an object"))
        }
    }
    d.deserialize_any(V(PhantomData))
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct WireNode {
    metadata: Field<WireMeta>,
    status: Field<WireStatus>,
}

#[derive(Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct WireMeta {
    #[serde(deserialize_with = "text")]
    name: Option<String>,
    #[serde(deserialize_with = "text")]
    resource_version: Option<String>,
    #[serde(deserialize_with = "text")]
    uid: Option<String>,
    #[serde(deserialize_with = "text")]
    deletion_timestamp: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct WireStatus {
    #[serde(deserialize_with = "list")]
    conditions: Field<Vec<Field<WireCondition>>>,
}

#[derive(Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct WireCondition {
    #[serde(rename = "type", deserialize_with = "text")]
    type_: Option<String>,
    #[serde(deserialize_with = "text")]
    status: Option<String>,
    #[serde(deserialize_with = "text")]
    reason: Option<String>,
    #[serde(deserialize_with = "text")]
    last_transition_time: Option<String>,
}

impl<'de> Deserialize<'de> for RouteNode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut node = RouteNode::default();
        let wire = match Field::<WireNode>::deserialize(d)? {
            Field::Value(w) => w,
            Field::Absent => WireNode::default(),
            Field::Odd(kind) => {
                node.unreadable = Some(format!("the object ({kind})"));
                return Ok(node);
            }
        };
        match wire.metadata {
            Field::Value(m) => {
                node.metadata.name = m.name;
                node.metadata.resource_version = m.resource_version;
                node.metadata.uid = m.uid;
                node.deleting = m.deletion_timestamp.is_some();
            }
            Field::Absent => {}
            Field::Odd(kind) => node.unreadable = Some(format!("metadata ({kind})")),
        }
        let conditions = match wire.status {
            Field::Absent => Vec::new(),
            Field::Odd(kind) => {
                node.unreadable.get_or_insert(format!("status ({kind})"));
                Vec::new()
            }
            Field::Value(s) => match s.conditions {
                Field::Absent => Vec::new(),
                Field::Odd(kind) => {
                    node.unreadable
                        .get_or_insert(format!("status.conditions ({kind})"));
                    Vec::new()
                }
                Field::Value(list) => list,
            },
        };
        for (i, c) in conditions.into_iter().enumerate() {
            match c {
                Field::Value(c) if c.type_.as_deref() == Some(CONDITION) => {
                    node.conditions.push(RouteCondition {
                        status: c.status.unwrap_or_default(),
                        reason: c.reason,
                        last_transition_time: c.last_transition_time,
                    });
                }
                Field::Value(_) | Field::Absent => {}
                // Could be a NetworkUnavailable condition: it blocks.
                Field::Odd(kind) => {
                    node.unreadable
                        .get_or_insert(format!("status.conditions[{i}] ({kind})"));
                }
            }
        }
        Ok(node)
    }
}

impl RouteNode {
    /// What this node says about its route, before our clock has a say:
    /// `Ok(the latest transition time given, if any)` only when it has a
    /// `NetworkUnavailable` condition and every one it has is `False` with
    /// `required_reason` and a readable (or no) transition time. Otherwise
    /// the first condition that blocks, by name.
    pub fn route(&self, required_reason: &str) -> Result<Option<Timestamp>, Blocker> {
        if let Some(what) = &self.unreadable {
            return Err(Blocker::Unreadable { what: clip(what) });
        }
        let count = self.conditions.len();
        if count == 0 {
            return Err(Blocker::NoCondition);
        }
        let says_routed = |c: &RouteCondition| {
            c.status == "False" && c.reason.as_deref() == Some(required_reason)
        };
        if let Some(c) = self.conditions.iter().find(|c| !says_routed(c)) {
            let (status, reason) = (clip(&c.status), clip(c.reason.as_deref().unwrap_or("")));
            return Err(if count > 1 {
                Blocker::OneOfSeveral {
                    count,
                    status,
                    reason,
                }
            } else if status == "True" && reason == "NoRouteCreated" {
                Blocker::NoRouteCreated
            } else {
                Blocker::Other { status, reason }
            });
        }
        let mut latest = None;
        for raw in self
            .conditions
            .iter()
            .filter_map(|c| c.last_transition_time.as_deref())
        {
            match raw.parse::<Timestamp>() {
                Ok(t) => latest = latest.max(Some(t)),
                Err(_) => return Err(Blocker::UnreadableTime { time: clip(raw) }),
            }
        }
        Ok(latest)
    }
}
