//! Unit tests of the deferred calls' state machine (memory store).
