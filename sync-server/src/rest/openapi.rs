//! What every documented operation shares in the OpenAPI document (the route table builds the
//! document from the handlers' `#[utoipa::path]` annotations and their request and response
//! types): the tenant header and the bearer scheme.

use serde::Deserialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

/// The optional tenant header of every authenticated route.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
pub struct TenantHeader {
    /// Must equal the token's tenant: another is 403 `TENANT_VIOLATION`, except for a
    /// `super_admin` who also sends `X-Justification` (audited).
    #[serde(rename = "X-Tenant-ID")]
    #[param(pattern = "^[A-Za-z0-9._:-]{1,128}$", example = "acme")]
    pub x_tenant_id: Option<String>,
}

/// Adds the `bearer` scheme (a JWT in `Authorization: Bearer …`) the operations name.
#[derive(Debug)]
pub struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let scheme = HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build();
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}
