//! Rebuilds the crate when a migration is added or changed: `sqlx::migrate!` embeds
//! `migrations/` at compile time, and on stable Rust cargo does not know it reads them.

fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
