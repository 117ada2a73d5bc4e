//! `Route::parse`: any method, any path; must never panic, and a parsed route must classify.
#![no_main]

use hyper::Method;
use libfuzzer_sys::fuzz_target;
use mozpool::http::route::Route;

const METHODS: [Method; 6] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::PATCH,
];

fuzz_target!(|data: &[u8]| {
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let method = &METHODS[usize::from(m) % METHODS.len()];
    let path = String::from_utf8_lossy(rest);
    if let Ok(route) = Route::parse(method, &path) {
        let _ = route.required_role();
        let _ = route.mutates();
        let _ = route.device();
    }
});
