<?php

declare(strict_types=1);

namespace App;

/**
 * Class Handler
 * @package App
 */
class Handler
{
    /**
     * @param string $data the request body
     * @return string the response body
     */
    public function handle($data)
    {
        return $data;
    }
}
