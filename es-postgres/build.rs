//! `sqlx::migrate!` embeds `migrations/` at compile time, but cargo does not know to recompile
//! when a migration is added or changed; this tells it.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
