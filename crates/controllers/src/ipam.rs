//! IPAM (in progress).
use std::sync::Arc;
/// IPAM.
pub struct IpamController;
impl IpamController {
    /// New.
    pub fn new(_c: kube::Client, _i: &crate::runtime::Informer<k8s_openapi::api::core::v1::Node>, _cidr: ipnet::Ipv4Net, _m: u8, _r: crate::runtime::Recorder) -> Arc<Self> { Arc::new(IpamController) }
    /// Run.
    pub async fn run(self: Arc<Self>) {}
}
