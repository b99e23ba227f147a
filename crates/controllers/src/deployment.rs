//! Deployment controller (in progress).
use std::sync::Arc;
use crate::runtime::Recorder;
/// Deployment controller.
pub struct DeploymentController;
impl DeploymentController {
    /// New.
    pub fn new(_c: kube::Client, _i: &crate::Informers, _r: Recorder) -> Arc<Self> { Arc::new(DeploymentController) }
    /// Run.
    pub async fn run(self: Arc<Self>, _w: usize) {}
}
