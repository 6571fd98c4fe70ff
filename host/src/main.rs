//! The `weir` binary: everything lives in the library; see `weir::cli`.

// mimalloc instead of glibc's malloc: the ack path allocates and frees small buffers per
// request on several threads, and glibc's arena locking and consolidation showed up as ~10% of
// the server's CPU in profiles of single-event ingest (docs/PERFORMANCE.md, Ingest).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    weir::cli::main()
}
