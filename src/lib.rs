//! overlay-switch-webhook: holds Calico's switch from an overlay (IPIP/VXLAN)
//! to native routing until every node has its cloud route.
//!
//! Data flows one way:
//! request -> [`admission`] decode -> [`overlay`] reading (pure) ->
//! [`gate`] (route state + toggle, pure) -> [`hold`] patch (pure) -> response,
//! composed in [`webhook`]. I/O lives at the edges: [`server`] and [`serve`],
//! the watches ([`watch`] feeding [`routes`], [`toggle`], [`held`]).
//!
//! calico-node's updates of `nodes/status` take a path of their own:
//! [`server`] -> [`node_status`] (pure merge of the NetworkUnavailable
//! condition) -> response; [`fix_conditions`] and [`scrape`] serve `status`.

pub mod admission;
pub mod calico_values;
pub mod certs;
pub mod cluster;
pub mod fix_conditions;
pub mod gate;
pub mod held;
pub mod hold;
pub mod last_seen;
pub mod merge;
pub mod metrics;
pub mod node_status;
pub mod overlay;
pub mod podenv;
pub mod release;
pub mod routes;
pub mod scrape;
pub mod serve;
pub mod server;
pub mod status;
pub mod tls;
pub mod toggle;
pub mod watch;
pub mod webhook;
pub mod webhook_config;
