// Test IDL for the rpc filter's Thrift tests (compiled by Debian's thrift-compiler at test time).
namespace py calc

exception Overflow {
  1: string why
}

service Calc {
  i32 add(1: i32 a, 2: i32 b),
  i32 div(1: i32 a, 2: i32 b) throws (1: Overflow o),
  oneway void log(1: string line),
  string echo(1: string s),
  i32 logged(),
}

service Admin {
  string whoami(),
  void reset(),
}
