//! Gardener mode (in the seed): one server guards many shoots. The seed's
//! `Cluster` resources say which shoots are guarded ([`shoot`]); each
//! guarded shoot is one [`crate::cluster::Cluster`] value reached through
//! its access Secret ([`access`]) and served under its own path
//! ([`shoots`], [`http`]); its webhook is registered in the shoot through a
//! ManagedResource ([`registration`], kept by [`reconcile`]), at a path
//! only that shoot's API server knows ([`path_token`]). The server
//! can keep its own certificates in the seed ([`certificates`]), and answers
//! for our `Extension` resources, whose health condition shows a held switch
//! in the Shoot's status ([`extension`], [`extension_controller`]).
//!
//! The per-cluster core does not know about Gardener: this module only
//! builds `Cluster` values and sets their guard from outside.

pub mod access;
pub mod certificates;
pub mod extension;
pub mod extension_controller;
pub mod http;
pub mod path_token;
pub mod reconcile;
pub mod registration;
pub mod shoot;
pub mod shoots;
