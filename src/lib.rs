//! overlay-switch-webhook: holds Calico's switch from an overlay (IPIP/VXLAN)
//! to native routing until every node has its cloud route.
//!
//! The folders, from the bottom up (imports flow one way, downwards):
//! - [`calico`]: reading Calico's objects exactly as Calico does (pure).
//! - [`cluster`]: one guarded cluster: its watch-fed state (node routes,
//!   toggle, held records), the pure gate and hold record, and the release
//!   controller that acts on it.
//! - [`server`]: the HTTPS admission server: decode -> [`calico`] reading ->
//!   [`cluster::gate`] -> [`cluster::hold`] patch -> response, and the
//!   node-status path that keeps the route controller's condition.
//! - [`gardener`]: seed mode: one server for many shoots, each a
//!   [`cluster::Cluster`] value built from its Gardener `Cluster` resource,
//!   with its registration in the shoot.
//! - [`cli`]: the commands (`serve`, `status`, `webhook-config`).

pub mod calico;
pub mod cli;
pub mod cluster;
pub mod gardener;
pub mod metrics;
pub mod server;
