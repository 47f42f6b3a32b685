<?php

declare(strict_types=1);

namespace App;

/**
 * The OpenFaaS php8 contract: handle() gets the request body and returns the response body;
 * request metadata is in the Http_* environment variables.
 */
class Handler
{
    public function handle($data)
    {
        $name = trim((string) $data);
        if ($name === '') {
            parse_str((string) getenv('Http_Query'), $query);
            $name = is_string($query['name'] ?? null) ? $query['name'] : 'world';
        }
        return json_encode(['message' => "Hello, $name!"]);
    }
}
