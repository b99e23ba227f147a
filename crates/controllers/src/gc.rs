//! GC (in progress).
/// Run.
pub async fn run(_c: kube::Client) {}
