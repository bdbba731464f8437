//! `cargo run -p kiln-models --bin write-kernels`: rewrite `kernels-generated/` from the
//! kernels in `kiln_models::kernels::ALL` (one `.cu` per specialisation; stale files removed)
//! and print what changed. The `kernels_generated_fresh` test fails until this has been run.

use kiln_models::kernels::generated;

fn main() -> std::process::ExitCode {
    let dir = generated::dir();
    match generated::write(&dir) {
        Ok(d) if d.is_clean() => {
            println!("kernels-generated/ is up to date");
            std::process::ExitCode::SUCCESS
        }
        Ok(d) => {
            println!("kernels-generated/ updated:\n{d}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("write-kernels: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
