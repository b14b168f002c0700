//! NAT lab: network namespaces with real NAT routers, for tests that need root.
