//! SA (in progress).
use std::sync::Arc;
/// SA.
pub struct ServiceAccountController;
impl ServiceAccountController {
    /// New.
    pub fn new(_c: kube::Client, _n: &crate::runtime::Informer<k8s_openapi::api::core::v1::Namespace>, _s: &crate::runtime::Informer<k8s_openapi::api::core::v1::ServiceAccount>) -> Arc<Self> { Arc::new(ServiceAccountController) }
    /// Run.
    pub async fn run(self: Arc<Self>, _w: usize) {}
}
