//! Gardener mode (seed): one server guards many shoots.
