//! The commands: `serve` (single cluster or `--gardener`), `status`,
//! `webhook-config`, and the helpers only they use.

pub mod fix_conditions;
pub mod scrape;
pub mod serve;
pub mod serve_gardener;
pub mod status;
pub mod status_gardener;
