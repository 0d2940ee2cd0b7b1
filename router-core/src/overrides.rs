//! Admin overrides: forced routes that bypass model choice (a forced model) or the strategy as
//! well (a forced endpoint), for incident response ("send everything from agent X to model Y
//! now"). Set by an administrator in the settings (`forced_routes`), they apply before rules,
//! experiments and strategies, and every decision they make says so in its reason. A forced
//! endpoint is used whatever its health or breaker: that is the administrator's call.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::request::RouteRequest;

/// One forced route (`forced_routes` in the settings).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForcedRoute {
    /// Send matching requests to this model (its endpoints chosen by the strategy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_id: Option<String>,
    /// Or to exactly this endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_id: Option<String>,
    /// Only requests of this agent type (every one when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_type: Option<String>,
    /// Only requests of this workspace (every one when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_id: Option<String>,
    /// Why, shown in each decision's reason.
    pub reason: String,
}

impl ForcedRoute {
    pub(crate) fn validate(&self) -> Result<()> {
        if self.model_id.is_none() && self.endpoint_id.is_none() {
            return Err(Error::config(
                "model_id",
                "a forced route needs a model_id or an endpoint_id",
            ));
        }
        if self.reason.trim().is_empty() {
            return Err(Error::config("reason", "say why the route is forced"));
        }
        Ok(())
    }

    pub(crate) fn matches(&self, req: &RouteRequest) -> bool {
        let eq = |want: &Option<String>, got: &Option<String>| want.is_none() || want == got;
        eq(&self.agent_type, &req.agent_type) && eq(&self.workspace_id, &req.workspace_id)
    }
}
