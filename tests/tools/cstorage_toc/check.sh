#!/bin/sh
# Checks zstd:chunked blobs with containers/storage's own reader (v1.55.0, the first with
# ensureTOCMatchesTarSplit, which refuses a TOC whose entries differ from the tar-split's
# headers), built with Go 1.19 (Debian 12) by shimming the few Go 1.20/1.21 library calls it
# makes.  Not run by CI (it needs c/storage's source, and there is no network there):
#
#   tests/tools/cstorage_toc/check.sh C_STORAGE_SRC BLOB ANNOTATIONS_JSON
#
# C_STORAGE_SRC: a c/storage v1.55.0 tree with its vendor/ (e.g. `git archive v1.55.0`),
# modified in place.  Exit status 0 when c/storage accepts the blob.
set -eu
src=$1 blob=$2 ann=$3
here=$(cd "$(dirname "$0")" && pwd)
cd "$src"
if [ ! -e zz_minmax.go ]; then
    sed -i -e 's/^go 1\.21.*/go 1.19/' -e '/^toolchain/d' go.mod
    perl -0pi -e 's/(\w+), ok := strings\.CutPrefix\(([\w.]+), ([\w.]+)\)/$1, ok := strings.TrimPrefix($2, $3), strings.HasPrefix($2, $3)/g' \
        pkg/chunked/internal/compression.go pkg/archive/archive.go
    sed -i -e 's/testing\.Testing()/false/g' -e 's/^\t"testing"$/\t_ "testing"/' \
        vendor/github.com/cyphar/filepath-securejoin/openat2_linux.go \
        vendor/github.com/cyphar/filepath-securejoin/testing_mocks_linux.go
    mkdir -p vendor/maps vendor/slices
    cat > vendor/maps/maps.go <<'GO'
package maps

func Equal[M1, M2 ~map[K]V, K, V comparable](m1 M1, m2 M2) bool {
	if len(m1) != len(m2) {
		return false
	}
	for k, v1 := range m1 {
		if v2, ok := m2[k]; !ok || v1 != v2 {
			return false
		}
	}
	return true
}
GO
    cat > vendor/slices/slices.go <<'GO'
package slices

func DeleteFunc[S ~[]E, E any](s S, del func(E) bool) S {
	out := s[:0]
	for _, v := range s {
		if !del(v) {
			out = append(out, v)
		}
	}
	return out
}

func Contains[S ~[]E, E comparable](s S, v E) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}
GO
    cat > zz_minmax.go <<'GO'
package storage

type ordered interface {
	~int | ~int8 | ~int16 | ~int32 | ~int64 | ~uint | ~uint8 | ~uint16 | ~uint32 | ~uint64 | ~uintptr | ~float32 | ~float64 | ~string
}

func min[T ordered](a T, b ...T) T {
	for _, x := range b {
		if x < a {
			a = x
		}
	}
	return a
}

func max[T ordered](a T, b ...T) T {
	for _, x := range b {
		if x > a {
			a = x
		}
	}
	return a
}
GO
fi
cp "$here/layerstore_test.go" pkg/chunked/zz_layerstore_test.go
GOFLAGS="-mod=vendor -tags=exclude_graphdriver_btrfs,btrfs_noversion,exclude_graphdriver_devicemapper,containers_image_openpgp" \
LS_BLOB=$blob LS_ANNOTATIONS=$(cat "$ann") go test -count=1 -v -run TestLayerstoreBlob ./pkg/chunked/
