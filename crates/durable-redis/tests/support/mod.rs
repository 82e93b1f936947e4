//! Test support: an Upstash REST emulation in front of a real Redis.
#![allow(dead_code, unreachable_pub)]

pub mod upstash_emulator;
