;; sieve: counts the primes up to N (decimal on standard input; 1000000 if there is none) with a
;; sieve of Eratosthenes, one byte per number in linear memory, and prints the count.
;; Uses memory in proportion to N and fuel in proportion to N log log N: the example for limits.
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  ;; 0: iovec; 8: count read/written; 64..96: input; ..1000: output digits; 65536..: the sieve
  (func (export "_start")
    (local $n i32) (local $i i32) (local $j i32) (local $c i32) (local $count i32)
    (local $digits i32) (local $p i32) (local $need i32)
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 32))
    (if (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8))
      (then (i32.store (i32.const 8) (i32.const 0))))
    (block $parsed
      (loop $parse
        (br_if $parsed (i32.ge_u (local.get $i) (i32.load (i32.const 8))))
        (local.set $c (i32.load8_u (i32.add (i32.const 64) (local.get $i))))
        (br_if $parsed (i32.or (i32.lt_u (local.get $c) (i32.const 48)) (i32.gt_u (local.get $c) (i32.const 57))))
        (local.set $n (i32.add (i32.mul (local.get $n) (i32.const 10)) (i32.sub (local.get $c) (i32.const 48))))
        (local.set $digits (i32.add (local.get $digits) (i32.const 1)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $parse)))
    (if (i32.eqz (local.get $digits)) (then (local.set $n (i32.const 1000000))))
    ;; pages for 65536 + n + 1 bytes
    (local.set $need (i32.shr_u (i32.add (local.get $n) (i32.const 131072)) (i32.const 16)))
    (if (i32.gt_u (local.get $need) (memory.size))
      (then
        (if (i32.eq (memory.grow (i32.sub (local.get $need) (memory.size))) (i32.const -1))
          (then (call $proc_exit (i32.const 2))))))
    (local.set $i (i32.const 2))
    (block $sieved
      (loop $outer
        (br_if $sieved (i32.gt_u (i32.mul (local.get $i) (local.get $i)) (local.get $n)))
        (if (i32.eqz (i32.load8_u (i32.add (i32.const 65536) (local.get $i))))
          (then
            (local.set $j (i32.mul (local.get $i) (local.get $i)))
            (block $crossed
              (loop $inner
                (br_if $crossed (i32.gt_u (local.get $j) (local.get $n)))
                (i32.store8 (i32.add (i32.const 65536) (local.get $j)) (i32.const 1))
                (local.set $j (i32.add (local.get $j) (local.get $i)))
                (br $inner)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $outer)))
    (local.set $i (i32.const 2))
    (block $counted
      (loop $count_primes
        (br_if $counted (i32.gt_u (local.get $i) (local.get $n)))
        (if (i32.eqz (i32.load8_u (i32.add (i32.const 65536) (local.get $i))))
          (then (local.set $count (i32.add (local.get $count) (i32.const 1)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $count_primes)))
    (i32.store8 (i32.const 1000) (i32.const 10))
    (local.set $p (i32.const 1000))
    (loop $digit
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i32.store8 (local.get $p) (i32.add (i32.const 48) (i32.rem_u (local.get $count) (i32.const 10))))
      (local.set $count (i32.div_u (local.get $count) (i32.const 10)))
      (br_if $digit (local.get $count)))
    (i32.store (i32.const 0) (local.get $p))
    (i32.store (i32.const 4) (i32.sub (i32.const 1001) (local.get $p)))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
