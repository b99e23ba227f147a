//! Pods bound to this node: [`translate`] (Pod → CRI configs, pure), [`status`] (observed CRI
//! state → PodStatus, pure), [`volumes`] (materialising emptyDir/configMap/secret/hostPath),
//! [`worker`] (one task per pod driving CRI toward the spec).

pub mod status;
pub mod translate;
pub mod volumes;
pub mod worker;
