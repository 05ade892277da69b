;; hello: writes its standard input back reversed (`Hello, World` -> `dlroW ,olleH`), then a
;; newline. A WASI preview 1 command; reads at most 64 KiB and reverses bytes (ASCII text).
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  ;; 0: iovec {ptr, len}; 8: bytes read or written; 1024..: the text
  (func (export "_start")
    (local $len i32) (local $n i32) (local $i i32) (local $j i32) (local $t i32)
    (block $done
      (loop $read
        (i32.store (i32.const 0) (i32.add (i32.const 1024) (local.get $len)))
        (i32.store (i32.const 4) (i32.sub (i32.const 65536) (local.get $len)))
        (br_if $done (i32.eqz (i32.load (i32.const 4))))
        (br_if $done (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
        (local.set $n (i32.load (i32.const 8)))
        (br_if $done (i32.eqz (local.get $n)))
        (local.set $len (i32.add (local.get $len) (local.get $n)))
        (br $read)))
    ;; one trailing newline is not part of the text
    (if (i32.gt_u (local.get $len) (i32.const 0))
      (then
        (if (i32.eq (i32.load8_u (i32.add (i32.const 1023) (local.get $len))) (i32.const 10))
          (then (local.set $len (i32.sub (local.get $len) (i32.const 1)))))))
    (local.set $i (i32.const 1024))
    (local.set $j (i32.add (i32.const 1023) (local.get $len)))
    (block $reversed
      (loop $swap
        (br_if $reversed (i32.ge_s (local.get $i) (local.get $j)))
        (local.set $t (i32.load8_u (local.get $i)))
        (i32.store8 (local.get $i) (i32.load8_u (local.get $j)))
        (i32.store8 (local.get $j) (local.get $t))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (local.set $j (i32.sub (local.get $j) (i32.const 1)))
        (br $swap)))
    (i32.store8 (i32.add (i32.const 1024) (local.get $len)) (i32.const 10))
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (i32.add (local.get $len) (i32.const 1)))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
