//! Endpoints (in progress).
use std::sync::Arc;
/// managed-by label.
pub const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// our name.
pub const CONTROLLER_NAME: &str = "endpointslice-controller.k8s.io";
/// Endpoints controller.
pub struct EndpointsController;
impl EndpointsController {
    /// New.
    pub fn new(_c: kube::Client, _i: &crate::Informers) -> Arc<Self> { Arc::new(EndpointsController) }
    /// Run.
    pub async fn run(self: Arc<Self>, _w: usize) {}
}
