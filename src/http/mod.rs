//! The HTTP edge: listeners, admission, routes and the one error type.

pub mod context;
pub mod gate;
pub mod listener;
pub mod openapi;
pub mod problem;
pub mod routes;
pub mod state;

use actix_web::body::BoxBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};

/// The service an [`actix_web::App`] of either listener builds.
pub trait AppFactory:
    ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<BoxBody>,
        Error = actix_web::Error,
        InitError = (),
    >
{
}

impl<T> AppFactory for T where
    T: ServiceFactory<
            ServiceRequest,
            Config = (),
            Response = ServiceResponse<BoxBody>,
            Error = actix_web::Error,
            InitError = (),
        >
{
}
