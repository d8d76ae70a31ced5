//! Generated gRPC types and services.

/// Terraform plugin protocol 6.
pub mod tfplugin6 {
    tonic::include_proto!("tfplugin6");
}

/// go-plugin's controller service.
pub mod go_plugin {
    tonic::include_proto!("plugin");
}

/// The merak-agent API.
pub mod agent {
    tonic::include_proto!("merak.agent.v1");
}
