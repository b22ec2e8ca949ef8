//! The `cdrhook` binary: everything is in the library (see `cli`).

fn main() {
    std::process::exit(cdrhook::cli::main());
}
