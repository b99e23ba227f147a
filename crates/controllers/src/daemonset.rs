//! DaemonSet controller (in progress).
use std::sync::Arc;
use crate::runtime::Recorder;
/// DaemonSet controller.
pub struct DaemonSetController;
impl DaemonSetController {
    /// New.
    pub fn new(_c: kube::Client, _i: &crate::Informers, _r: Recorder) -> Arc<Self> { Arc::new(DaemonSetController) }
    /// Run.
    pub async fn run(self: Arc<Self>, _w: usize) {}
}
