//! NL (in progress).
use std::sync::Arc;
/// NL.
pub struct NodeLifecycleController;
impl NodeLifecycleController {
    /// New.
    pub fn new(_c: kube::Client, _i: &crate::Informers, _cfg: &crate::ControllersConfig, _r: crate::runtime::Recorder) -> Arc<Self> { Arc::new(NodeLifecycleController) }
    /// Run.
    pub async fn run(self: Arc<Self>) {}
}
